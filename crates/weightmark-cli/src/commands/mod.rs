//! One module per subcommand.

pub mod demo;
pub mod detect;
pub mod embed;
pub mod inspect;
pub mod keygen;
