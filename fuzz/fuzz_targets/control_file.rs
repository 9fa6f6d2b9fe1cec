//! Any text as a control file: parse and validate must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let env = |_: &str| Some("fuzz-secret".to_owned());
    if let Err(e) = turnout::config::parse(text, std::path::Path::new("fuzz.toml"), &env) {
        // Rendering the located errors must not panic either.
        let _ = e.to_string();
    }
});
