//! Exists so that `enforcer` can name this crate as a build dependency (see `enforcer/build.rs`);
//! the programs are in the `enforcer` binary target, built for the BPF target only.
#![no_std]
