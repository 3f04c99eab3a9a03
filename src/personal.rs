//! Personal data as shown by default: emails and names masked (pure). Operators ask for
//! them in full explicitly (`--show-emails`, `show_emails=true`).

/// `A. L.` for `Ada Lovelace`: a name as shown unless asked for in full.
pub fn initials(name: &str) -> String {
    name.split_whitespace()
        .filter_map(|w| w.chars().next())
        .map(|c| format!("{c}."))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `a***@example.com`: an email as shown unless asked for in full.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_masked_to_their_first_letter_and_domain() {
        assert_eq!(mask_email("ada.lovelace@example.com"), "a***@example.com");
        assert_eq!(mask_email("x@y"), "x***@y");
        assert_eq!(mask_email("not an email"), "***");
        assert_eq!(mask_email(""), "***");
    }

    #[test]
    fn names_are_shown_as_initials() {
        assert_eq!(initials("Ada Lovelace"), "A. L.");
        assert_eq!(initials("  "), "");
    }
}
