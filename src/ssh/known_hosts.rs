//! known_hosts verification (skeleton).
pub struct KnownHosts;
pub enum HostKeyPolicy {}
