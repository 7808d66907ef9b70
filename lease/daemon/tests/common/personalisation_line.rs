//! What the test guest (images/testguest, `mode=personalise`) says about the line it got
//! on the personalisation port (images/rootfs/PERSONALISE.md): it prints each as
//! `personalised: LINE` on its console.

/// The lines the guest printed as `personalised: LINE` in console text `text`.
pub fn personalised(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("personalised: "))
        .map(str::to_string)
        .collect()
}

/// The value of `key` in a personalisation line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}
