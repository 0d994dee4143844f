//! `rookery-broker passwd FILE USER [-D]`: adds, updates or deletes a user in a
//! Mosquitto-format password file. The password comes from the terminal (asked twice, not
//! echoed) or from the first line of standard input, never from the command line, where other
//! users could read it in the process list. The file is replaced atomically (written beside it,
//! then renamed) so that a broker polling it never reads half a file.

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::ExitCode;

use rookery_auth::password::{PasswordFile, Scheme};
use rookery_broker::config::{Command, HashScheme};

/// PBKDF2-HMAC-SHA512 iterations for new `$7$` entries (OWASP's 2023 figure).
const PBKDF2_ITERATIONS: u32 = 210_000;

pub fn run(command: Command) -> ExitCode {
    match passwd(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rookery-broker passwd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn passwd(command: Command) -> anyhow::Result<()> {
    let Command::Passwd {
        file,
        user,
        delete,
        hash,
    } = command
    else {
        anyhow::bail!("not a passwd command");
    };
    let mut passwords = match std::fs::read_to_string(&file) {
        Ok(text) => {
            PasswordFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !delete => PasswordFile::parse("")?,
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", file.display())),
    };
    if delete {
        if !passwords.remove(&user) {
            anyhow::bail!("no user {user:?} in {}", file.display());
        }
    } else {
        let password = read_password()?;
        let scheme = match hash {
            HashScheme::Argon2id => Scheme::Argon2id,
            HashScheme::Pbkdf2 => Scheme::Pbkdf2Sha512 {
                iterations: PBKDF2_ITERATIONS,
            },
        };
        passwords
            .set(&user, password.as_bytes(), scheme)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    write_atomically(&file, &passwords.render())
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Reenter password: ")?;
        if first != again {
            anyhow::bail!("the passwords do not match");
        }
        return non_empty(first);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    non_empty(line.trim_end_matches(['\r', '\n']).to_string())
}

fn non_empty(password: String) -> anyhow::Result<String> {
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    Ok(password)
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    // Through a symlink (a mounted Secret, say), replace the file it points to, not the link.
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let (tmp, mut file) = tempfile_in(dir, &target)?;
    let written = (|| -> anyhow::Result<()> {
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &target)
            .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", target.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A new file beside `path`, readable by its owner only (it holds password hashes).
fn tempfile_in(dir: &Path, path: &Path) -> anyhow::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "passwd".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0o600);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", tmp.display()))?;
    Ok((tmp, file))
}
