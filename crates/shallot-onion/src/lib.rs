#![doc = include_str!("../README.md")]

mod address;
mod blind;

pub use address::{
    ADDRESS_LABEL_LEN, ADDRESS_SUFFIX, ADDRESS_VERSION, AddressError, OnionAddress, SpecialName,
    TOR_ONION_SUFFIX,
};
pub use blind::{
    BlindedSigningKey, PERIOD_LENGTH_MINUTES, PERIOD_OFFSET_MINUTES, blinded_public_key,
    period_num, subcredential,
};
