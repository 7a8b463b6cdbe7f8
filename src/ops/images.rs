//! Container images on the hosts (install_method docker). `push`: pgha copies the
//! images from this machine's Docker to each host that lacks exactly that image
//! (same image id; a re-run sends nothing), compressed, several images in one
//! stream so shared layers travel once. `registry`: hosts pull the references.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::docker;
use crate::error::Failure;
use crate::inventory::Cluster;
use crate::ssh::{Cmd, Session, shell_quote};
use crate::ui::Ui;

/// The ids of the cluster's images in this machine's Docker (push), keyed by
/// reference. A missing image fails before any change, naming it and how to get it.
pub async fn local_ids(c: &Cluster) -> Result<BTreeMap<String, String>, Failure> {
    let mut ids = BTreeMap::new();
    if c.docker_image_source != "push" {
        return Ok(ids);
    }
    for r in crate::docker::stack::images(c) {
        let out = docker::output(&["image", "inspect", "-f", "{{.Id}}", &r], docker::TIMEOUT)
            .await
            .map_err(|f| {
                Failure::error(format!(
                    "docker_image_source push needs this machine's Docker: {f}"
                ))
            })?;
        if !out.success() {
            return Err(Failure::options(format!(
                "image {r} is not in this machine's Docker, and docker_image_source is push \
                 (pgha copies images from here): build pgha's own with `pgha images build`, \
                 or `docker pull`/`docker load` {r} here, or set docker_image_source: registry \
                 for the hosts to pull it; nothing was changed"
            )));
        }
        ids.insert(r, out.stdout.trim().to_string());
    }
    Ok(ids)
}

/// `docker save` of the images, gzip-compressed, made once per run.
#[derive(Default)]
pub struct Archive {
    cell: OnceCell<Vec<u8>>,
}

impl Archive {
    async fn get(&self, refs: &[String]) -> Result<&Vec<u8>, String> {
        self.cell
            .get_or_try_init(|| async {
                let t = Instant::now();
                let script = format!(
                    "docker save {} | gzip -1",
                    refs.iter()
                        .map(|r| shell_quote(r))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                let out = tokio::process::Command::new("sh")
                    .args(["-c", &script])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .output();
                let out = tokio::time::timeout(Duration::from_secs(1800), out)
                    .await
                    .map_err(|_| "docker save took over 30 minutes".to_string())?
                    .map_err(|e| format!("docker save: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "docker save {}: {}",
                        refs.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                tracing::info!(
                    "saved {} ({} MB compressed) in {:.1}s",
                    refs.join(", "),
                    out.stdout.len() / 1_000_000,
                    t.elapsed().as_secs_f64()
                );
                Ok(out.stdout)
            })
            .await
    }
}

/// Bring the images a host lacks (the plan's `Image` actions) onto it: pulled
/// (registry), or sent from here (push). Returns the number of images it got.
pub async fn ensure_on(
    c: &Cluster,
    host: &str,
    s: &Session,
    missing: &[String],
    archive: &Archive,
    ui: &Ui,
) -> anyhow::Result<u32> {
    if missing.is_empty() {
        return Ok(0);
    }
    if c.docker_image_source != "push" {
        for r in missing {
            ui.host(host, format!("pulling {r}"));
            s.exec(
                &Cmd::root(format!("docker pull -q {}", shell_quote(r)))
                    .timeout(Duration::from_secs(1800)),
            )
            .await?
            .ok()?;
        }
        return Ok(missing.len() as u32);
    }
    // One stream with every image of the cluster: shared layers travel once, and
    // `docker load` skips the layers a host already has.
    let data = archive
        .get(&crate::docker::stack::images(c))
        .await
        .map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    ui.host(
        host,
        format!(
            "sending {} ({} MB compressed)",
            missing.join(", "),
            data.len() / 1_000_000
        ),
    );
    let progress = ui.transfer(host, "images", data.len() as u64);
    let report = progress.clone();
    let loaded = s
        .exec(
            &Cmd::root("gunzip | docker load -q >/dev/null")
                .stdin(data.clone())
                .stdin_progress(move |done| report.set(done))
                .timeout(Duration::from_secs(1800)),
        )
        .await;
    progress.finish();
    loaded?.ok()?;
    let secs = t.elapsed().as_secs_f64();
    ui.host(
        host,
        format!(
            "images loaded in {secs:.1}s ({:.1} MB/s)",
            data.len() as f64 / 1e6 / secs.max(0.001)
        ),
    );
    Ok(missing.len() as u32)
}
