//! The binary's own commands, outside the library: the REST client behind `submit`, `jobs`,
//! `watch`, `export`, `schedule …` ([`client`]) and `batchforge bench` ([`bench`]). Both use
//! only the library's public API, as any other program could.

pub mod bench;
pub mod client;
