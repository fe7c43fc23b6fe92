//! Turning a task's generated text into structure: the `Spotting:` task's lines and
//! polygons. (Tables' OTSL to HTML lives with the server, in `server::otsl`.)

pub mod spotting;

pub use spotting::{parse_spotting, SpottedLine, SpottingError};
