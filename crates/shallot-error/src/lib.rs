#![doc = include_str!("../README.md")]

mod kind;

pub use kind::{Advice, ErrorKind, HasKind};
