//! What a request may do, decided once: [`admission`] (the tenant's rate and concurrency, the
//! bounded fair per-profile queue, the run slots).

pub mod admission;
mod rate;
