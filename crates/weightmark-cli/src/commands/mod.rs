//! One module per subcommand.

pub mod attack;
pub mod bench;
pub mod convert;
pub mod demo;
pub mod detect;
pub mod embed;
pub mod eval;
pub mod identify;
pub mod inspect;
pub mod keygen;
pub mod reveal;
pub mod verify;
