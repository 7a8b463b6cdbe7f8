//! Workload clients for the lab: a writer through the router's write port, a reader
//! through its read port, and a stream of fresh connections, each recording what it
//! saw (acknowledged ids and the server that acknowledged them, the server behind
//! each read, how long each connection took to end). The end-to-end tests and the
//! benchmark measure failovers, switchovers and upgrades with them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::probe::{Net, sql};
use crate::wait::{WaitError, until};
use tokio::task::JoinHandle;

/// Where the clients connect: a host (the router), as whom (the superuser unless
/// `as_user`), and how (the cluster's TLS material when it has TLS).
#[derive(Debug, Clone)]
pub struct Target {
    pub net: Net,
    pub host: String,
    pub password: String,
    pub user: String,
    pub dbname: String,
}

impl Target {
    pub fn new(net: Net, host: &str, password: &str) -> Target {
        Target {
            net,
            host: host.to_string(),
            password: password.to_string(),
            user: "postgres".into(),
            dbname: "postgres".into(),
        }
    }

    /// The same host as another role, into another database.
    pub fn as_user(&self, user: &str, password: &str, dbname: &str) -> Target {
        Target {
            user: user.into(),
            password: password.into(),
            dbname: dbname.into(),
            ..self.clone()
        }
    }

    pub fn endpoint(&self, port: u16) -> sql::Endpoint {
        sql::Endpoint {
            host: self.host.clone(),
            port,
            user: self.user.clone(),
            password: self.password.clone(),
            dbname: self.dbname.clone(),
        }
    }
}

/// A connection (the superuser's unless `as_user`) with the whole handshake
/// bounded (HAProxy accepts at once, and a session bound for a dead server could
/// otherwise hang).
pub async fn pg(t: &Target, port: u16) -> Result<tokio_postgres::Client, String> {
    sql::connect_bounded(&t.net, &t.endpoint(port), Duration::from_secs(5)).await
}

/// An acknowledged insert: its id, the server that acknowledged it, and when.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: i32,
    pub server: String,
    /// When the insert was sent.
    pub sent: Instant,
    /// When its acknowledgement arrived.
    pub at: Instant,
}

/// A client inserting rows through the router's write port until stopped. Every
/// insert is bounded (no answer within 3 s, 40 s through a pooler, is no
/// acknowledgement) and reports the server that acknowledged it; every failure (a
/// connection refused or lost, an insert failed or unanswered) is recorded.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Ack>>>,
    errors: Arc<Mutex<Vec<(Instant, String)>>>,
    task: JoinHandle<()>,
}

impl Writer {
    /// `table` must exist with columns (id int primary key, note text).
    pub fn start(t: &Target, table: &str, first_id: i32) -> Writer {
        Self::spawn(t, 5000, table, first_id, Duration::from_secs(3))
    }

    /// The same through a pooler's port. A pooled client waits through a planned
    /// operation's pause (pgha resumes after 30 s at the latest) instead of
    /// failing, so its inserts are bounded at 40 s: a wait is not an error.
    pub fn start_pooled(t: &Target, port: u16, table: &str, first_id: i32) -> Writer {
        Self::spawn(t, port, table, first_id, Duration::from_secs(40))
    }

    fn spawn(t: &Target, port: u16, table: &str, first_id: i32, bound: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (t, table) = (t.clone(), table.to_string());
        let stop2 = stop.clone();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let acked2 = acked.clone();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let errors2 = errors.clone();
        let task = tokio::spawn(async move {
            let failed = |e: String| errors2.lock().unwrap().push((Instant::now(), e));
            let mut i = first_id;
            let mut client = None;
            let sql = format!(
                "INSERT INTO {table} VALUES ($1, 'writer') RETURNING host(inet_server_addr())"
            );
            while !stop2.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = match pg(&t, port).await {
                        Ok(c) => Some(c),
                        Err(e) => {
                            failed(format!("connect: {e}"));
                            None
                        }
                    };
                }
                if let Some(c) = &client {
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&i];
                    let sent = Instant::now();
                    let insert = c.query_one(&sql, &params);
                    match tokio::time::timeout(bound, insert).await {
                        Ok(Ok(row)) => acked2.lock().unwrap().push(Ack {
                            id: i,
                            server: row.get(0),
                            sent,
                            at: Instant::now(),
                        }),
                        Ok(Err(e)) => {
                            failed(format!("insert {i}: {}", sql::pg_error(&e)));
                            client = None;
                        }
                        Err(_) => {
                            failed(format!("insert {i}: no answer within {}s", bound.as_secs()));
                            client = None;
                        }
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    // Retry soon: the gaps measured are the cluster's, not this client's
                    // (a 200 ms pause added up to 0.2 s to every measured outage).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Writer {
            stop,
            acked,
            errors,
            task,
        }
    }

    /// The failures so far: when, and what.
    pub fn errors(&self) -> Vec<(Instant, String)> {
        self.errors.lock().unwrap().clone()
    }

    /// The acknowledgements so far.
    pub fn acked(&self) -> Vec<Ack> {
        self.acked.lock().unwrap().clone()
    }

    /// Wait until `n` writes sent after `since` were acknowledged (by `server` when
    /// named): the writer is observed working, not assumed to be after a sleep.
    pub async fn wait_acked(
        &self,
        n: usize,
        since: Instant,
        server: Option<&str>,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let what = match server {
            Some(s) => format!("{n} writes acknowledged by {s}"),
            None => format!("{n} writes acknowledged"),
        };
        until(&what, timeout, || async {
            let acked = self.acked.lock().unwrap();
            let got = acked
                .iter()
                .filter(|a| a.sent >= since && server.is_none_or(|s| a.server == s))
                .count();
            let last = acked
                .last()
                .map(|a| format!("last by {}", a.server))
                .unwrap_or_else(|| "none yet".into());
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} so far ({} in all, {last})", acked.len()))
            }
        })
        .await
    }

    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer task");
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// One read through the router's read port, with what the serving server said
/// about itself at that moment.
#[derive(Debug, Clone)]
pub struct Read {
    pub server: String,
    pub in_recovery: bool,
    /// pg_stat_wal_receiver.status ("" when there is no WAL receiver).
    pub receiver: String,
    pub received_tli: i32,
    pub at: Instant,
}

/// A client reading through the read port until stopped (a new connection for each
/// read, so every read is routed afresh).
pub struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<Mutex<Vec<Read>>>,
    task: JoinHandle<()>,
}

impl Reader {
    pub fn start(t: &Target) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let t = t.clone();
        let stop2 = stop.clone();
        let reads = Arc::new(Mutex::new(Vec::new()));
        let reads2 = reads.clone();
        let task = tokio::spawn(async move {
            while !stop2.load(Ordering::SeqCst) {
                if let Ok(c) = pg(&t, 5001).await {
                    let q = c.query_one(
                        "SELECT host(inet_server_addr()), pg_is_in_recovery(), \
                         coalesce((SELECT status FROM pg_stat_wal_receiver), ''), \
                         coalesce((SELECT received_tli FROM pg_stat_wal_receiver), 0)",
                        &[],
                    );
                    if let Ok(Ok(row)) = tokio::time::timeout(Duration::from_secs(3), q).await {
                        reads2.lock().unwrap().push(Read {
                            server: row.get(0),
                            in_recovery: row.get(1),
                            receiver: row.get(2),
                            received_tli: row.get(3),
                            at: Instant::now(),
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Reader { stop, reads, task }
    }

    /// Wait until a read after `since` was served by `server`.
    pub async fn wait_served_by(
        &self,
        server: &str,
        since: Instant,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        until(
            &format!("a read through the read port served by {server}"),
            timeout,
            || async {
                let reads = self.reads.lock().unwrap();
                let after: Vec<&Read> = reads.iter().filter(|r| r.at >= since).collect();
                if after.iter().any(|r| r.server == server) {
                    Ok(())
                } else {
                    let mut by: Vec<&str> = after.iter().map(|r| r.server.as_str()).collect();
                    by.sort();
                    by.dedup();
                    Err(format!("{} reads since, served by {by:?}", after.len()))
                }
            },
        )
        .await
    }

    pub async fn stop(self) -> Vec<Read> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("reader task");
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

/// New connections through the write port, one every 100 ms until stopped, each
/// running `SELECT 1`: how long each took to end (success or error), so a test can
/// bound it. Each is capped at 60 s here, far above any bound a test asserts.
pub struct Connector {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<(Duration, bool)>>,
}

impl Connector {
    pub fn start(t: &Target) -> Connector {
        let stop = Arc::new(AtomicBool::new(false));
        let t = t.clone();
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut attempts = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                let t = t.clone();
                attempts.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let ep = t.endpoint(5000);
                    let attempt = async {
                        // Unbounded here: the test bounds how long each may take.
                        let c =
                            sql::connect_bounded(&t.net, &ep, Duration::from_secs(3600)).await?;
                        c.simple_query("SELECT 1")
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>(())
                    };
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(60), attempt).await,
                        Ok(Ok(()))
                    );
                    (t0.elapsed(), ok)
                }));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut out = Vec::new();
            for a in attempts {
                out.push(a.await.expect("connection attempt"));
            }
            out
        });
        Connector { stop, task }
    }

    /// Stop opening connections; wait for every attempt to end.
    pub async fn stop(self) -> Vec<(Duration, bool)> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("connector task")
    }
}
