//! One module per subcommand.

pub mod attack;
pub mod bench;
pub mod convert;
pub mod demo;
pub mod detect;
pub mod embed;
pub mod eval;
pub mod fingerprint;
pub mod identify;
pub mod inspect;
pub mod issue;
pub mod keygen;
pub mod reveal;
pub mod verify;
