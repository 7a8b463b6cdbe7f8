//! Named pause points, for tests that must act at an exact step of a command
//! (kill it, or change the cluster under it) without relying on timing. Compiled
//! out of release builds.
//!
//! A test runs pgha with `PGHA_PAUSE_AT=name[,name...]` and `PGHA_PAUSE_DIR=DIR`.
//! When the run reaches a named point it prints `pgha: paused at NAME` on stderr
//! and waits until the file `DIR/NAME` exists, removes it, and goes on. Each time
//! a point is reached it pauses again. `fail_once` makes a named step fail the
//! first time it is reached (`PGHA_FAIL_ONCE=name`).
//!
//! Layer 0: imports nothing of pgha.

/// Pause here when a test asked for this point (debug builds only).
pub async fn pause(name: &str) {
    #[cfg(debug_assertions)]
    hook(name).await;
    #[cfg(not(debug_assertions))]
    let _ = name;
}

#[cfg(debug_assertions)]
async fn hook(name: &str) {
    use std::io::Write;
    let Ok(at) = std::env::var("PGHA_PAUSE_AT") else {
        return;
    };
    if !at.split(',').any(|p| p.trim() == name) {
        return;
    }
    let dir = std::env::var_os("PGHA_PAUSE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let go = dir.join(name);
    eprintln!("pgha: paused at {name} (create {} to go on)", go.display());
    let _ = std::io::stderr().flush();
    while std::fs::remove_file(&go).is_err() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!("pgha: going on from {name}");
}

/// Whether a test asked this point to fail, the first time this process reaches
/// it (debug builds only): `PGHA_FAIL_ONCE=name[,name...]`. For a retry that must
/// be seen to happen.
pub fn fail_once(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        use std::sync::Mutex;
        static FAILED: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let asked =
            std::env::var("PGHA_FAIL_ONCE").is_ok_and(|at| at.split(',').any(|p| p.trim() == name));
        let mut failed = FAILED.lock().unwrap_or_else(|e| e.into_inner());
        if !asked || failed.iter().any(|f| f == name) {
            return false;
        }
        failed.push(name.to_string());
        eprintln!("pgha: failing at {name} once (PGHA_FAIL_ONCE)");
        true
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}
