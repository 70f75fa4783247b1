//! The configuration parser: `NAME=value` lines as the environment; it returns a config or a
//! clear error. The IP list parser on each value too.
#![no_main]
use std::collections::HashMap;

use commguard::config::{parse_ip_or_cidr, parse_micros, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let vars: HashMap<String, String> =
        text.lines().filter_map(|line| line.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let _ = Config::from_lookup(|name| vars.get(name).cloned());
    for value in vars.values() {
        let _ = parse_ip_or_cidr(value);
        let _ = parse_micros(value);
    }
});
