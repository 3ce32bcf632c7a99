//! Endpoint specs from JSON and YAML: must never panic, and every accepted spec round-trips
//! through both formats unchanged ("rerun with the same settings" is load-and-deploy).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serving_core::EndpointSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for spec in [EndpointSpec::from_json(text), EndpointSpec::from_yaml(text)]
        .into_iter()
        .flatten()
    {
        assert_eq!(EndpointSpec::from_json(&spec.to_json()).unwrap(), spec);
        assert_eq!(EndpointSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
    }
});
