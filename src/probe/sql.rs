//! SQL through the router: the end-to-end proof that writes reach the primary via
//! HAProxy's write port and replicate to what the read port serves.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::Net;

/// Connection settings for one endpoint (host, port, user, password, database).
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

pub async fn connect(net: &Net, ep: &Endpoint) -> Result<Client, String> {
    connect_bounded(net, ep, Duration::from_secs(5)).await
}

/// Connect with the whole handshake bounded: tokio-postgres' connect_timeout covers
/// only the TCP connect, and HAProxy accepts at once, so a session bound for a dead
/// server could otherwise hang.
pub async fn connect_bounded(net: &Net, ep: &Endpoint, bound: Duration) -> Result<Client, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&ep.host)
        .port(ep.port)
        .user(&ep.user)
        .password(ep.password.as_bytes())
        .dbname(&ep.dbname)
        .connect_timeout(bound)
        .application_name("pgha");
    // With the cluster's TLS, over TLS, the server's certificate verified against
    // the cluster CA and its name (sslmode=verify-full).
    match net.tls() {
        Some(t) => {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            open(&cfg, t.pg_connector(), ep, bound).await
        }
        None => open(&cfg, NoTls, ep, bound).await,
    }
}

/// Connect with `tls`, the handshake bounded; the connection is driven in the
/// background.
async fn open<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    ep: &Endpoint,
    bound: Duration,
) -> Result<Client, String>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, conn) = tokio::time::timeout(bound, cfg.connect(tls))
        .await
        .map_err(|_| {
            format!(
                "{}:{}: no answer within {}s",
                ep.host,
                ep.port,
                bound.as_secs_f32()
            )
        })?
        .map_err(|e| format!("{}:{}: {}", ep.host, ep.port, pg_error(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The server's own message when there is one (tokio-postgres' Display is terse).
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

/// Write a unique token through the write endpoint; returns it.
pub async fn write_canary(net: &Net, ep: &Endpoint, token: &str) -> Result<(), String> {
    let c = connect(net, ep).await?;
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS pgha_canary (token text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(|e| format!("create pgha_canary: {}", pg_error(&e)))?;
    c.execute("INSERT INTO pgha_canary (token) VALUES ($1)", &[&token])
        .await
        .map_err(|e| format!("insert: {}", pg_error(&e)))?;
    // Keep the table small across many deploys.
    c.execute(
        "DELETE FROM pgha_canary WHERE at < now() - interval '1 day'",
        &[],
    )
    .await
    .map_err(|e| format!("trim: {}", pg_error(&e)))?;
    Ok(())
}

/// Whether the token is visible through the endpoint, and on which server
/// (inet_server_addr, and whether it is a replica).
pub async fn read_canary(
    net: &Net,
    ep: &Endpoint,
    token: &str,
) -> Result<(bool, String, bool), String> {
    let c = connect(net, ep).await?;
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pgha_canary WHERE token = $1), host(inet_server_addr()), pg_is_in_recovery()",
            &[&token],
        )
        .await
        .map_err(|e| format!("select: {}", pg_error(&e)))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}
