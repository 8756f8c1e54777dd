//! The templates, compiled into the binary from `templates/`: every file
//! there but the table `files.toml` (listed by the build script).

include!(concat!(env!("OUT_DIR"), "/templates.rs"));
