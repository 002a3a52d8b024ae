//! Workspace and layer names become object-store key components, so they are restricted to a
//! conservative alphabet: a name can never escape its prefix or collide after normalisation.

pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok_start || !ok_rest || name.len() > 128 {
        return Err(format!(
            "{what} name {name:?} is not valid: use 1-128 characters from A-Z a-z 0-9 . _ -, \
             starting with a letter or digit"
        ));
    }
    Ok(())
}
