//! The drc wire protocol: generated prost messages and tonic services.
//!
//! See `proto/drc.proto` for the compatibility rules.

#![allow(clippy::all, clippy::pedantic)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("drc.v1");
}

pub use v1::*;
