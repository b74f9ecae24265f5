//! Feeds arbitrary bytes to the XML intake and, when they parse, to the shipped
//! ServiceNow and Remedy plans (dispatch and cancel). Any panic, hang or unbounded
//! allocation is a finding. Run: `cargo +nightly fuzz run xml_mapping`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use safepoint_gateway::mapping::xml::{Document, Limits};
use safepoint_gateway::mapping::MappingPlan;

fn plans() -> &'static [MappingPlan; 2] {
    static PLANS: OnceLock<[MappingPlan; 2]> = OnceLock::new();
    PLANS.get_or_init(|| {
        [
            MappingPlan::from_str(
                include_str!("../../mappings/servicenow.toml"),
                "servicenow.toml",
            )
            .expect("servicenow mapping compiles"),
            MappingPlan::from_str(include_str!("../../mappings/remedy.toml"), "remedy.toml")
                .expect("remedy mapping compiles"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(doc) = Document::parse(data, &limits) {
        for plan in plans() {
            let _ = plan.map_document(&doc);
            let _ = plan.cancel_reason(Some(&doc));
        }
    }
});
