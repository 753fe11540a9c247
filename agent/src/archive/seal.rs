//! One WAL object's bytes through the same tools as a base backup: `zstd`
//! then `age` to seal, `age -d` then `zstd -d` to open. So a human restores
//! archived WAL with the standard tools alone, as the runbook shows.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::process::{spawn, stderr_of, Proc};

/// Compresses `data` at `level` and encrypts it to every recipient.
pub async fn seal(data: Vec<u8>, recipients: &[String], level: i32) -> Result<Vec<u8>, String> {
    if recipients.is_empty() {
        return Err("no age recipient to encrypt WAL to".into());
    }
    let mut age = Command::new("age");
    for r in recipients {
        age.args(["-r", r]);
    }
    pipe(data, Command::new("zstd").args(["-q", "-c", &format!("-{level}")]), "zstd", &mut age, "age").await
}

/// Decrypts with `identity` and decompresses.
pub async fn open(data: Vec<u8>, identity: &Path) -> Result<Vec<u8>, String> {
    let mut age = Command::new("age");
    age.args(["-d", "-i"]).arg(identity);
    pipe(data, &mut age, "age -d", Command::new("zstd").args(["-q", "-d", "-c"]), "zstd -d").await
}

/// `data | first | second`, all of `second`'s output.
async fn pipe(data: Vec<u8>, first: &mut Command, first_name: &str, second: &mut Command, second_name: &str) -> Result<Vec<u8>, String> {
    let mut a = spawn(first.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()), first_name)?;
    let between: Stdio = a.stdout.take().ok_or("no stdout")?.try_into().map_err(|e| format!("{first_name} stdout: {e}"))?;
    let mut b = spawn(second.stdin(between).stdout(Stdio::piped()).stderr(Stdio::piped()), second_name)?;
    let mut input = a.stdin.take().ok_or("no stdin")?;
    let writer = tokio::spawn(async move {
        // A stage that fails early closes its input: its own error says why.
        let _ = input.write_all(&data).await;
        let _ = input.shutdown().await;
    });
    let mut out = Vec::new();
    let read = b.stdout.take().ok_or("no stdout")?.read_to_end(&mut out).await;
    let _ = writer.await;
    check(&mut a, first_name).await?;
    check(&mut b, second_name).await?;
    read.map_err(|e| format!("reading {second_name}: {e}"))?;
    Ok(out)
}

async fn check(p: &mut Proc, what: &str) -> Result<(), String> {
    let status = p.wait().await.map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status}): {}", stderr_of(p).await))
    }
}
