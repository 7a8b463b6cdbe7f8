//! The plan engine: roles as data -> desired state; facts (read-only, one round trip
//! per host) -> a pure plan; apply runs only what the plan holds.
//!
//! Layer 2: may import install (same layer, one way: install imports engine, not
//! back), the edges and layer 0; never ops or commands.

pub mod apply;
pub mod desired;
pub mod facts;
pub mod mask;
pub mod params;
pub mod plan;
pub mod preflight;
pub mod quote;
pub mod roles;
pub mod scram;
pub mod sqlplan;
pub mod upgrade;
