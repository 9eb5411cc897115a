//! The host's apt sources: which mirror it uses, and a backports source on
//! that same mirror.
//!
//! Reads both formats apt reads: one-line `.list` files (`deb [opts] URI
//! SUITE COMPONENTS...`) and deb822 `.sources` paragraphs (`Types:`,
//! `URIs:`, `Suites:`, `Components:`, `Enabled:`, `Signed-By:`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One `deb` source apt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<String>,
    /// The file it came from.
    pub file: PathBuf,
}

/// The name of the backports source this tool writes.
pub const BACKPORTS_FILE: &str = "sources.list.d/petrel-backports.sources";
/// What earlier versions wrote (a mirror fixed in the code); replaced.
const OLD_BACKPORTS_FILE: &str = "sources.list.d/petrel-backports.list";

/// Every enabled `deb` source under `apt_dir` (normally `/etc/apt`).
pub fn sources(apt_dir: &Path) -> Result<Vec<Source>> {
    let mut files = Vec::new();
    let main = apt_dir.join("sources.list");
    if main.is_file() {
        files.push(main);
    }
    let dir = apt_dir.join("sources.list.d");
    if dir.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        entries.sort();
        files.extend(entries);
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        if file.extension().is_some_and(|e| e == "sources") {
            out.extend(parse_deb822(&text, &file));
        } else {
            out.extend(parse_one_line(&text, &file));
        }
    }
    Ok(out)
}

fn parse_one_line(text: &str, file: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        let mut signed_by = None;
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            // Options: `[arch=amd64 signed-by=/path]`, possibly over words.
            for word in words.by_ref() {
                let option = word.trim_start_matches('[').trim_end_matches(']');
                if let Some(path) = option.strip_prefix("signed-by=") {
                    signed_by = Some(path.to_string());
                }
                if word.ends_with(']') {
                    break;
                }
            }
        }
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(Source {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            signed_by,
            file: file.to_path_buf(),
        });
    }
    out
}

fn parse_deb822(text: &str, file: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in paragraph.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // A continuation line (e.g. an inline Signed-By key).
                if let Some((_, value)) = fields.last_mut() {
                    value.push('\n');
                    value.push_str(line.trim());
                }
            } else if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let words = |key: &str| -> Vec<String> {
            get(key)
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let enabled = get("enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        if !enabled || !words("types").iter().any(|t| t == "deb") {
            continue;
        }
        for uri in words("uris") {
            out.push(Source {
                uri,
                suites: words("suites"),
                components: words("components"),
                signed_by: get("signed-by").map(str::to_string),
                file: file.to_path_buf(),
            });
        }
    }
    out
}

/// The source that serves `codename`'s main component: the host's mirror.
pub fn mirror<'a>(sources: &'a [Source], codename: &str) -> Option<&'a Source> {
    sources.iter().find(|s| {
        s.suites.iter().any(|x| x == codename) && s.components.iter().any(|c| c == "main")
    })
}

/// Whether some source already serves `suite` (main).
pub fn has_suite(sources: &[Source], suite: &str) -> bool {
    sources
        .iter()
        .any(|s| s.suites.iter().any(|x| x == suite) && s.components.iter().any(|c| c == "main"))
}

/// The deb822 paragraph for `suite` on `mirror`'s URI (its key too).
pub fn backports_paragraph(mirror: &Source, suite: &str) -> String {
    let mut text = format!(
        "# Written by `cargo xtask setup` (Petrel): QEMU 10 and the 6.12 kernel source,\n\
         # from the mirror of {}.\n\
         Types: deb\nURIs: {}\nSuites: {suite}\nComponents: main\n",
        mirror.file.display(),
        mirror.uri
    );
    if let Some(key) = &mirror.signed_by {
        if key.contains('\n') {
            // An inline key keeps its continuation lines indented.
            let indented: Vec<String> = key.lines().map(|l| format!(" {l}")).collect();
            text.push_str(&format!("Signed-By:{}\n", indented.join("\n")));
        } else {
            text.push_str(&format!("Signed-By: {key}\n"));
        }
    }
    text
}

/// Writes the backports source under `apt_dir` (and removes the one-line
/// file earlier versions wrote); returns whether anything changed.
pub fn write_backports(apt_dir: &Path, paragraph: &str) -> Result<bool> {
    let path = apt_dir.join(BACKPORTS_FILE);
    let old = apt_dir.join(OLD_BACKPORTS_FILE);
    let mut changed = false;
    if old.exists() {
        std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
        changed = true;
    }
    if std::fs::read_to_string(&path).ok().as_deref() != Some(paragraph) {
        std::fs::write(&path, paragraph).with_context(|| format!("writing {}", path.display()))?;
        changed = true;
    }
    Ok(changed)
}

/// Whether a source is the one this tool wrote (not the host's own).
pub fn is_ours(source: &Source, apt_dir: &Path) -> bool {
    source.file == apt_dir.join(BACKPORTS_FILE) || source.file == apt_dir.join(OLD_BACKPORTS_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources_give_uri_suite_components_and_key() {
        let text = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n\
                    deb-src http://m.example/debian bookworm main\n";
        let sources = parse_one_line(text, Path::new("/a.list"));
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].uri, "http://m.example/debian");
        assert_eq!(sources[0].suites, ["bookworm"]);
        assert_eq!(sources[0].components, ["main", "contrib"]);
        assert_eq!(sources[0].signed_by.as_deref(), Some("/k.gpg"));
    }

    #[test]
    fn deb822_paragraphs_skip_disabled_and_source_only_entries() {
        let text = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n\
                    Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n";
        let sources = parse_deb822(text, Path::new("/d.sources"));
        assert_eq!(sources.len(), 1);
        let mirror = mirror(&sources, "bookworm").expect("a mirror");
        assert_eq!(mirror.uri, "http://a.example/debian");
        let paragraph = backports_paragraph(mirror, "bookworm-backports");
        assert!(paragraph.contains("URIs: http://a.example/debian\n"));
        assert!(paragraph.contains("Suites: bookworm-backports\n"));
        assert!(paragraph.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
    }

    #[test]
    fn security_suite_is_not_taken_for_the_mirror() {
        let text = "deb http://security.example/debian-security bookworm-security main\n\
                    deb http://local.mirror/debian bookworm main\n";
        let sources = parse_one_line(text, Path::new("/a.list"));
        assert_eq!(
            mirror(&sources, "bookworm").map(|s| s.uri.as_str()),
            Some("http://local.mirror/debian")
        );
    }
}
