//! The host the collector runs on: reading `/proc` ([`kernel`]), the self-check of kernel and
//! process limits against the config with the files that fix them ([`check`]), and kernel
//! counters sampled as metrics while serving ([`sampler`]).

pub mod check;
pub mod kernel;
pub(crate) mod sampler;
