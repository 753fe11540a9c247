//! The code's layout: no module imports one that imports it back.
//!
//! For every crate of the workspace, each module's `crate::…` and `super::…`
//! paths (outside comments and test modules) are read as dependencies of
//! that module; two sibling modules that depend on each other, at any depth,
//! fail the test with the paths that make the cycle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

type ModPath = Vec<String>;

#[test]
fn no_module_imports_one_that_imports_it_back() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the workspace")?;
    let mut cycles = Vec::new();
    let mut crates = 0;
    for entry in std::fs::read_dir(root)? {
        let src = entry?.path().join("src");
        if !src.join("lib.rs").exists() && !src.join("main.rs").exists() {
            continue;
        }
        crates += 1;
        cycles.extend(crate_cycles(&src)?);
    }
    assert!(crates >= 6, "found only {crates} crates under {}", root.display());
    assert!(cycles.is_empty(), "modules that import each other:\n{}", cycles.join("\n"));
    Ok(())
}

#[test]
fn a_cycle_between_two_modules_is_found() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path();
    std::fs::create_dir_all(src.join("a"))?;
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n")?;
    std::fs::write(src.join("a/mod.rs"), "mod x;\nuse crate::{c, b::{Thing, Other}};\n")?;
    std::fs::write(src.join("a/x.rs"), "// crate::c is only a comment\nuse super::super::c;\n")?;
    std::fs::write(src.join("b.rs"), "fn f() { crate::a::x::g() }\n#[cfg(test)]\nmod tests { use crate::c; }\n")?;
    std::fs::write(src.join("c.rs"), "")?;
    let found = crate_cycles(src)?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("a <-> b"), "{found:?}");
    Ok(())
}

/// The pairs of sibling modules of one crate that depend on each other.
fn crate_cycles(src: &Path) -> Result<Vec<String>> {
    // (from, to) sibling pairs, each with one example of the file that made it.
    let mut deps: BTreeMap<(ModPath, ModPath), String> = BTreeMap::new();
    for file in rust_files(src)? {
        let name = file.strip_prefix(src)?.display().to_string();
        let module = module_of(&name);
        if module.first().is_some_and(|m| m == "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        for target in referenced(&module, &code_of(&text)) {
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common < module.len() && common < target.len() {
                let key = (module[..=common].to_vec(), target[..=common].to_vec());
                deps.entry(key).or_insert_with(|| name.clone());
            }
        }
    }
    let mut cycles = Vec::new();
    for ((a, b), file) in &deps {
        if a < b {
            if let Some(back) = deps.get(&(b.clone(), a.clone())) {
                cycles.push(format!("{}: {} <-> {} ({file}, {back})", src.display(), a.join("::"), b.join("::")));
            }
        }
    }
    Ok(cycles)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(files)
}

/// `a/b.rs` and `a/b/mod.rs` (relative to `src`) are module `a::b`.
fn module_of(file: &str) -> ModPath {
    let mut parts: ModPath = file.trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
        parts.pop();
    }
    parts
}

/// The text without line comments, and without what follows `#[cfg(test)]`
/// (test modules sit at the end of a file).
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    // Non-ASCII (only in strings) as spaces, so that any byte index is a
    // char boundary.
    let code = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    code.chars().map(|c| if c.is_ascii() { c } else { ' ' }).collect()
}

/// The module paths `crate::…` and `super::…` name in `code`; a braced group
/// names each of its items.
fn referenced(module: &ModPath, code: &str) -> Vec<ModPath> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        let base = if !word_start {
            None
        } else if code[i..].starts_with("crate::") {
            Some((Vec::new(), i + "crate::".len()))
        } else if code[i..].starts_with("super::") {
            let mut at = i;
            let mut base = module.clone();
            while code[at..].starts_with("super::") {
                base.pop();
                at += "super::".len();
            }
            Some((base, at))
        } else {
            None
        };
        let Some((mut path, mut at)) = base else {
            i += 1;
            continue;
        };
        loop {
            let len = code[at..].bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
            if len > 0 {
                path.push(code[at..at + len].to_string());
                at += len;
                if code[at..].starts_with("::") {
                    at += 2;
                    continue;
                }
                found.push(path);
            } else if code[at..].starts_with('{') {
                let (items, end) = group_items(&code[at..]);
                for first in items {
                    if first != "self" {
                        found.push([path.clone(), vec![first]].concat());
                    }
                }
                at += end;
            }
            break;
        }
        i = at.max(i + 1);
    }
    found
}

/// The first path segment of each item of the braced group `group` starts
/// with, and where the group ends.
fn group_items(group: &str) -> (Vec<String>, usize) {
    let (mut items, mut depth, mut item_start) = (Vec::new(), 0, 1);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                let first = group[item_start..i].trim().split("::").next().unwrap_or("").trim();
                if !first.is_empty() {
                    items.push(first.to_string());
                }
                item_start = i + 1;
                if c == '}' {
                    return (items, i + 1);
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    (items, group.len())
}
