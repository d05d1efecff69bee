//! The rules a file name must follow to be listed, requested or written.
//!
//! Both ends apply the same rules: the server refuses to list or serve a
//! name that breaks them, and the client refuses to write one. A valid name
//! is relative, `/`-separated UTF-8 with no way to climb out of the folder
//! it is resolved against.

use std::fmt;

/// Longest name in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest single path component in bytes (the common file-system limit).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    ComponentTooLong,
    Absolute,
    Backslash,
    ControlChar,
    EmptyComponent,
    DotComponent,
    OuterWhitespace,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            NameError::Empty => "name is empty",
            NameError::TooLong => "name is longer than 1024 bytes",
            NameError::ComponentTooLong => "a path component is longer than 255 bytes",
            NameError::Absolute => "absolute paths are not allowed",
            NameError::Backslash => "backslashes are not allowed",
            NameError::ControlChar => "control characters are not allowed",
            NameError::EmptyComponent => "empty path components are not allowed",
            NameError::DotComponent => "'.' and '..' components are not allowed",
            NameError::OuterWhitespace => "leading or trailing whitespace is not allowed",
        };
        f.write_str(text)
    }
}

impl std::error::Error for NameError {}

/// Checks `name` against the name rules.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlChar);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    if name.trim() != name {
        return Err(NameError::OuterWhitespace);
    }
    for component in name.split('/') {
        match component {
            "" => return Err(NameError::EmptyComponent),
            "." | ".." => return Err(NameError::DotComponent),
            c if c.len() > MAX_COMPONENT_LEN => return Err(NameError::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "a",
            "movie.mkv",
            "with space.txt",
            "sub/dir/file.bin",
            "Ünïcødé файл 文件.txt",
            "a..b",
            ".hidden-but-named",
            "x/.y",
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn refuses_path_tricks() {
        let cases = [
            ("", NameError::Empty),
            ("../x", NameError::DotComponent),
            ("a/../../x", NameError::DotComponent),
            ("./x", NameError::DotComponent),
            ("/etc/hostname", NameError::Absolute),
            ("a\\..\\b", NameError::Backslash),
            ("a//b", NameError::EmptyComponent),
            ("a/", NameError::EmptyComponent),
            ("a\0b", NameError::ControlChar),
            ("a\nb", NameError::ControlChar),
            ("a\tb", NameError::ControlChar),
            ("a\u{7f}", NameError::ControlChar),
            (" a", NameError::OuterWhitespace),
            ("a ", NameError::OuterWhitespace),
        ];
        for (name, want) in cases {
            assert_eq!(validate_name(name), Err(want), "{name:?}");
        }
    }

    #[test]
    fn refuses_overlong_names() {
        assert_eq!(
            validate_name(&"a".repeat(256)),
            Err(NameError::ComponentTooLong)
        );
        assert_eq!(validate_name(&"a".repeat(255)), Ok(()));
        let long = vec!["b".repeat(200); 6].join("/");
        assert_eq!(validate_name(&long), Err(NameError::TooLong));
    }
}
