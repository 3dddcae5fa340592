//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same decoders the `cargo fuzz` targets drive, so any input that once
//! crashed a decoder stays a test on stable Rust.

use std::path::Path;

#[test]
fn the_committed_fuzz_corpus_decodes_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    type Decoder = fn(&[u8]);
    let targets: [(&str, Decoder); 4] = [
        ("control", fastchat_proto::fuzzing::control),
        ("envelope", fastchat_proto::fuzzing::envelope),
        ("image", fastchat_proto::fuzzing::image),
        ("bus", fastchat_proto::fuzzing::bus),
    ];
    let mut replayed = 0;
    for (name, decode) in targets {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            decode(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= 30, "the corpus is missing ({replayed} inputs)");
}
