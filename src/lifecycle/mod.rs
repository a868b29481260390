//! The Extensions API side: registration, the `/event/next` loop's events, error reports.

pub mod api;
pub mod cadence;
pub mod event_loop;

pub use api::{ExtensionsApi, LifecycleError, NextEvent, Registration};
