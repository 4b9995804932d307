//! The `app` condition's patterns: which programs a rule is about.
//!
//! - with a `/`, a pattern is matched against the executable's full path
//!   (`/usr/bin/curl`, `/opt/*/bin/*`);
//! - without one, against the executable's file name, or the whole name a
//!   platform gives (`curl`, `firefox*`, `com.example.app`);
//! - `*` stands for any run of characters (slashes included), `?` for one
//!   character; anything else stands for itself.

/// One compiled `app` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPattern {
    text: String,
    /// Matched against the whole path (the pattern has a `/`).
    whole: bool,
}

impl AppPattern {
    /// Compiles `text`; an empty pattern is refused.
    ///
    /// # Errors
    /// The pattern is empty, or only blanks.
    pub fn new(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("an empty app pattern matches nothing".to_owned());
        }
        Ok(Self {
            text: text.to_owned(),
            whole: text.contains('/'),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the app named `app` (an executable's path, or a platform's
    /// name) is one the pattern means.
    pub fn matches(&self, app: &str) -> bool {
        if self.whole {
            return glob(self.text.as_bytes(), app.as_bytes());
        }
        let file = app.rsplit('/').next().unwrap_or(app);
        glob(self.text.as_bytes(), file.as_bytes()) || glob(self.text.as_bytes(), app.as_bytes())
    }
}

/// Whether `text` matches the glob `pat` (`*` any run, `?` one byte), in
/// time linear in their lengths times the number of stars at most.
fn glob(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last star was, and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last star take one more byte.
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pat: &str, app: &str) -> bool {
        AppPattern::new(pat).expect("pattern").matches(app)
    }

    #[test]
    fn paths_names_and_globs() {
        assert!(m("/usr/bin/curl", "/usr/bin/curl"));
        assert!(!m("/usr/bin/curl", "/usr/local/bin/curl"));
        assert!(m("curl", "/usr/local/bin/curl"));
        assert!(!m("curl", "/usr/bin/curlx"));
        assert!(m("firefox*", "/usr/lib/firefox/firefox-bin"));
        assert!(m("/opt/*/bin/*", "/opt/zoom/bin/zoom"));
        assert!(!m("/opt/*/bin/*", "/usr/bin/zoom"));
        assert!(m("/usr/bin/python3.??", "/usr/bin/python3.11"));
        assert!(!m("/usr/bin/python3.??", "/usr/bin/python3.9"));
        assert!(m("com.example.app", "com.example.app"));
        assert!(m("com.example.*", "com.example.app"));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(AppPattern::new(" ").is_err());
    }

    proptest::proptest! {
        /// A pattern without wildcards matches itself and nothing longer;
        /// a star in place of any part of it still matches.
        #[test]
        fn a_literal_and_its_starred_forms_match(s in "[a-z/._-]{1,24}", cut in 0usize..24, len in 0usize..8) {
            let lit = AppPattern { text: s.clone(), whole: true };
            proptest::prop_assert!(lit.matches(&s));
            let longer = format!("{s}x");
            proptest::prop_assert!(!lit.matches(&longer));
            let a = cut.min(s.len());
            let b = (a + len).min(s.len());
            let starred = AppPattern { text: format!("{}*{}", &s[..a], &s[b..]), whole: true };
            proptest::prop_assert!(starred.matches(&s));
        }
    }
}
