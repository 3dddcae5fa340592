//! `image`: one image (50 MiB by default) to an online friend, end to end
//! encrypted, timed from the send call to the recipient's checked file.

use std::time::{Duration, Instant};

use fastchat_client::{AttachmentKind, InboxKind, Recipient};

use super::befriend;
use crate::Options;
use crate::env::Env;
use crate::report::ScenarioResult;

pub async fn run(env: &Env, options: &Options) -> anyhow::Result<ScenarioResult> {
    let size = options.size.unwrap_or(50 << 20);
    let users = env.users(2).await?;
    let (alice, bob) = (users[0].clone(), users[1].clone());
    befriend(&[(alice.clone(), bob.clone())]).await?;
    std::fs::create_dir_all(env.scratch())?;
    let path = env.scratch().join("bench-image.bin");
    write_random(&path, size)?;

    let mut events = bob.subscribe();
    let start = Instant::now();
    let cpu = env.cpu_mark();
    let report = alice
        .send_attachment(
            &Recipient::Friend(bob.name().to_string()),
            &path,
            AttachmentKind::File,
            &|_, _| {},
        )
        .await?;
    let upload = start.elapsed();
    let arrived = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            match events.recv().await {
                Ok(item) if item.kind == InboxKind::File => return Some(item),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let elapsed = start.elapsed();
    let mut r = ScenarioResult::new("image", 2, size, "bytes", elapsed);
    r.set_cpu(env.cpu_since(&cpu, (size >> 20).max(1)));
    r.cpu_unit = Some("MiB".into());
    match arrived.and_then(|i| i.attachment) {
        Some(a) if a.bytes == size => {
            let _ = std::fs::remove_file(&a.path);
        }
        _ => r.lost = 1,
    }
    let _ = std::fs::remove_file(&path);
    r.notes.push(format!(
        "{:.1} MiB; upload acknowledged after {:.0} ms, file in place after {:.0} ms (cut-through: the download runs during the upload)",
        size as f64 / (1 << 20) as f64,
        upload.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e3
    ));
    r.operations = report.bytes;
    Ok(r)
}

fn write_random(path: &std::path::Path, size: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        fastchat_crypto::random_bytes(&mut block)?;
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    // On disk before the clock starts, as a user's file is: written back
    // during the run it held up the recipient's final sync (the file
    // system commits both in one journal transaction).
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}
