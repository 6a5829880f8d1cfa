//! The built-in agent's tools: run a shell command, read, write and edit a file, list and
//! search files. They act inside the working directory (the session's repository); a path
//! that leaves it is refused. What they return to the model is bounded.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::Emit;
use airlock_sandboxd::proto::AgentEvent;

/// Most output of one tool returned to the model.
const RESULT_BYTES: usize = 16 * 1024;
/// Largest file `read_file` returns whole.
const READ_BYTES: usize = 256 * 1024;
const LIST_ENTRIES: usize = 500;
const SEARCH_HITS: usize = 100;
const SHELL_TIMEOUT: Duration = Duration::from_secs(600);
/// Directories nobody wants listed or searched.
const SKIP_DIRS: &[&str] = &[".git", "node_modules", "target", ".venv", "__pycache__"];

/// The tool definitions, in the chat-completions `tools` form.
pub fn definitions() -> Value {
    let f = |name: &str, description: &str, params: Value| json!({"type": "function", "function": {"name": name, "description": description, "parameters": params}});
    let obj = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
    json!([
        f(
            "shell",
            "Run a shell command (bash) in the repository and return its exit status and output.",
            obj(
                json!({"command": {"type": "string", "description": "The command line"}}),
                &["command"]
            )
        ),
        f(
            "read_file",
            "Read a text file of the repository.",
            obj(json!({"path": {"type": "string"}}), &["path"])
        ),
        f(
            "write_file",
            "Create or overwrite a file with the given content.",
            obj(
                json!({"path": {"type": "string"}, "content": {"type": "string"}}),
                &["path", "content"]
            )
        ),
        f(
            "edit_file",
            "Replace one exact occurrence of old_string with new_string in a file.",
            obj(
                json!({"path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"}}),
                &["path", "old_string", "new_string"]
            )
        ),
        f(
            "list_files",
            "List the files under a directory of the repository (recursively).",
            obj(
                json!({"path": {"type": "string", "description": "Directory, default the repository root"}}),
                &[]
            )
        ),
        f(
            "search_files",
            "Find lines containing a text in the repository's files.",
            obj(
                json!({"pattern": {"type": "string"}, "path": {"type": "string"}}),
                &["pattern"]
            )
        ),
    ])
}

/// Bounds `text` to `max` bytes, keeping the end (where errors usually are).
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[… {cut} bytes cut …]\n{}", &text[cut..])
}

/// `path` inside `root`, or why not. Relative paths are taken from `root`.
pub fn inside(root: &Path, path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return Err(format!("{path} is outside the repository"));
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    if out.starts_with(root) {
        Ok(out)
    } else {
        Err(format!(
            "{path} is outside the repository ({})",
            root.display()
        ))
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the `{name}` argument is missing"))
}

/// Runs tool `name` with `args`; returns the text for the model. Events go to `emit`.
pub async fn run(root: &Path, name: &str, args: &Value, emit: &mut Emit) -> String {
    let result = match name {
        "shell" => shell(root, args, emit).await,
        "read_file" => read_file(root, args),
        "write_file" => write_file(root, args, emit),
        "edit_file" => edit_file(root, args, emit),
        "list_files" => list_files(root, args),
        "search_files" => search_files(root, args),
        other => Err(format!(
            "there is no tool `{other}`; use shell, read_file, write_file, edit_file, list_files or search_files"
        )),
    };
    match result {
        Ok(text) => tail(&text, RESULT_BYTES),
        Err(e) => format!("error: {e}"),
    }
}

async fn shell(root: &Path, args: &Value, emit: &mut Emit) -> Result<String, String> {
    let command = arg(args, "command")?;
    let mut child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{command} 2>&1"))
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let read = async {
        loop {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    emit.event(&AgentEvent::CommandOutput {
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    });
                    all.extend_from_slice(&buf[..n]);
                    if all.len() > 4 * RESULT_BYTES {
                        all.drain(..all.len() - 2 * RESULT_BYTES);
                    }
                }
            }
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(SHELL_TIMEOUT, read).await {
        Ok(Ok(s)) => s
            .code()
            .map(|c| format!("exit status {c}"))
            .unwrap_or_else(|| "killed by a signal".into()),
        Ok(Err(e)) => return Err(format!("the command failed: {e}")),
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: signalling our own child's process group.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            format!(
                "timed out after {} s and was killed",
                SHELL_TIMEOUT.as_secs()
            )
        }
    };
    Ok(format!(
        "{status}\n{}",
        tail(&String::from_utf8_lossy(&all), RESULT_BYTES)
    ))
}

fn read_file(root: &Path, args: &Value) -> Result<String, String> {
    let path = inside(root, arg(args, "path")?)?;
    let bytes =
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", rel(root, &path)))?;
    if bytes.contains(&0) {
        return Err(format!("{} is a binary file", rel(root, &path)));
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(READ_BYTES)]).into_owned();
    if bytes.len() > READ_BYTES {
        Ok(format!(
            "{text}\n[… the file has {} bytes; only the first {READ_BYTES} are shown]",
            bytes.len()
        ))
    } else {
        Ok(text)
    }
}

fn write_file(root: &Path, args: &Value, emit: &mut Emit) -> Result<String, String> {
    let path = inside(root, arg(args, "path")?)?;
    let content = arg(args, "content")?;
    let existed = path.exists();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&path, content)
        .map_err(|e| format!("cannot write {}: {e}", rel(root, &path)))?;
    let change = if existed { "edited" } else { "created" };
    emit.event(&AgentEvent::FileChange {
        path: rel(root, &path),
        change: change.into(),
    });
    Ok(format!(
        "wrote {} bytes to {}",
        content.len(),
        rel(root, &path)
    ))
}

fn edit_file(root: &Path, args: &Value, emit: &mut Emit) -> Result<String, String> {
    let path = inside(root, arg(args, "path")?)?;
    let old = arg(args, "old_string")?;
    let new = arg(args, "new_string")?;
    if old.is_empty() {
        return Err("old_string is empty; use write_file to create a file".into());
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", rel(root, &path)))?;
    match text.matches(old).count() {
        0 => return Err(format!("old_string does not occur in {}", rel(root, &path))),
        1 => {}
        n => {
            return Err(format!(
                "old_string occurs {n} times in {}; include more context so it occurs once",
                rel(root, &path)
            ))
        }
    }
    std::fs::write(&path, text.replacen(old, new, 1))
        .map_err(|e| format!("cannot write {}: {e}", rel(root, &path)))?;
    emit.event(&AgentEvent::FileChange {
        path: rel(root, &path),
        change: "edited".into(),
    });
    Ok(format!("edited {}", rel(root, &path)))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, max: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if out.len() >= max {
            return;
        }
        let p = e.path();
        let name = e.file_name();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            if !SKIP_DIRS.iter().any(|s| name == *s) {
                walk(&p, out, max);
            }
        } else if kind.is_file() {
            out.push(p);
        }
    }
}

fn list_files(root: &Path, args: &Value) -> Result<String, String> {
    let dir = match args.get("path").and_then(Value::as_str) {
        Some(p) if !p.is_empty() => inside(root, p)?,
        _ => root.to_path_buf(),
    };
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", rel(root, &dir)));
    }
    let mut files = Vec::new();
    walk(&dir, &mut files, LIST_ENTRIES + 1);
    let more = files.len() > LIST_ENTRIES;
    let mut text: String = files
        .iter()
        .take(LIST_ENTRIES)
        .map(|p| format!("{}\n", rel(root, p)))
        .collect();
    if more {
        text.push_str(&format!(
            "[… more than {LIST_ENTRIES} files; list a sub-directory]\n"
        ));
    }
    if text.is_empty() {
        text = "(no files)\n".into();
    }
    Ok(text)
}

fn search_files(root: &Path, args: &Value) -> Result<String, String> {
    let pattern = arg(args, "pattern")?;
    if pattern.is_empty() {
        return Err("the pattern is empty".into());
    }
    let dir = match args.get("path").and_then(Value::as_str) {
        Some(p) if !p.is_empty() => inside(root, p)?,
        _ => root.to_path_buf(),
    };
    let mut files = Vec::new();
    walk(&dir, &mut files, 20_000);
    let mut hits = Vec::new();
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        if bytes.len() > 2 * 1024 * 1024 || bytes.contains(&0) {
            continue;
        }
        for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if line.contains(pattern) {
                let line: String = line.chars().take(300).collect();
                hits.push(format!("{}:{}: {line}", rel(root, &f), i + 1));
                if hits.len() >= SEARCH_HITS {
                    hits.push(format!("[… stopped at {SEARCH_HITS} matches]"));
                    return Ok(hits.join("\n"));
                }
            }
        }
    }
    if hits.is_empty() {
        Ok(format!("no line contains {pattern:?}"))
    } else {
        Ok(hits.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_repository() {
        let root = Path::new("/workspace/repo");
        assert_eq!(inside(root, "src/a.rs").unwrap(), root.join("src/a.rs"));
        assert_eq!(inside(root, "./x/../b").unwrap(), root.join("b"));
        assert_eq!(inside(root, "/workspace/repo/c").unwrap(), root.join("c"));
        assert!(inside(root, "../other").is_err());
        assert!(inside(root, "/etc/passwd").is_err());
        assert!(inside(root, "a/../../..").is_err());
    }

    #[test]
    fn long_results_keep_their_end() {
        let t = tail(&"x".repeat(100), 10);
        assert!(t.ends_with(&"x".repeat(10)) && t.starts_with("[… 90 bytes cut …]"));
        assert_eq!(tail("short", 10), "short");
        // Never splits a character.
        let t = tail(&"é".repeat(10), 5);
        assert!(t.ends_with("éé"));
    }

    #[tokio::test]
    async fn file_tools_edit_in_place_and_report_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut emit = Emit::buffer();
        let w = run(
            root,
            "write_file",
            &json!({"path": "src/lib.rs", "content": "fn a() {}\nfn b() {}\n"}),
            &mut emit,
        )
        .await;
        assert_eq!(w, "wrote 20 bytes to src/lib.rs");
        let e = run(
            root,
            "edit_file",
            &json!({"path": "src/lib.rs", "old_string": "fn b() {}", "new_string": "fn c() {}"}),
            &mut emit,
        )
        .await;
        assert_eq!(e, "edited src/lib.rs");
        assert_eq!(
            std::fs::read_to_string(root.join("src/lib.rs")).unwrap(),
            "fn a() {}\nfn c() {}\n"
        );
        let twice = run(
            root,
            "edit_file",
            &json!({"path": "src/lib.rs", "old_string": "fn", "new_string": "pub fn"}),
            &mut emit,
        )
        .await;
        assert!(twice.contains("occurs 2 times"), "{twice}");
        let found = run(root, "search_files", &json!({"pattern": "fn c"}), &mut emit).await;
        assert_eq!(found, "src/lib.rs:2: fn c() {}");
        let listed = run(root, "list_files", &json!({}), &mut emit).await;
        assert_eq!(listed, "src/lib.rs\n");
        let escaped = run(
            root,
            "read_file",
            &json!({"path": "../../etc/passwd"}),
            &mut emit,
        )
        .await;
        assert!(
            escaped.starts_with("error:") && escaped.contains("outside the repository"),
            "{escaped}"
        );
        let shell = run(
            root,
            "shell",
            &json!({"command": "echo hi; exit 3"}),
            &mut emit,
        )
        .await;
        assert_eq!(shell, "exit status 3\nhi\n");
        let events = emit.lines();
        assert!(events[0].contains(r#""kind":"file_change""#) && events[0].contains("created"));
        assert!(events[1].contains("edited"));
        assert!(events
            .iter()
            .any(|l| l.contains(r#""kind":"command_output""#) && l.contains("hi")));
    }
}
