//! Inventory parsing, validation and rendering: no panic, every refusal
//! located at file:line:col, every accepted inventory rendered into files
//! that parse as their formats. The property is
//! `tests/src/inventory_fuzz.rs`, shared with the corpus replay test.
#![no_main]

#[path = "../../tests/src/inventory_fuzz.rs"]
mod inventory_fuzz;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = inventory_fuzz::check(data) {
        panic!("{e}");
    }
});
