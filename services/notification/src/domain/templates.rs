//! E-mail rendering: plain text and HTML from one notification.

/// HTML-escapes text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// (subject, text body, html body) of a notification e-mail.
pub fn email(title: &str, body: &str, recipient_name: &str) -> (String, String, String) {
    let text =
        format!("Hello {recipient_name},\n\n{body}\n\n-- SPM, sales performance management\n");
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\"><p>Hello {},</p><h2>{}</h2><p>{}</p>\
         <p style=\"color:#888\">SPM, sales performance management</p></body></html>",
        escape(recipient_name),
        escape(title),
        escape(body)
    );
    (format!("[SPM] {title}"), text, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html_and_keeps_text() {
        let (subject, text, html) = email("You earned 5 <EUR>", "a & b", "Ana");
        assert_eq!(subject, "[SPM] You earned 5 <EUR>");
        assert!(text.contains("a & b"));
        assert!(html.contains("You earned 5 &lt;EUR&gt;") && html.contains("a &amp; b"));
    }
}
