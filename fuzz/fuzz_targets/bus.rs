#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fastchat_proto::fuzzing::bus(data);
});
