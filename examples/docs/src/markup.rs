//! Markup to plain text: just enough Markdown and HTML handling for word statistics and
//! summaries. The output keeps paragraph breaks but is not yet whitespace-normalised; callers
//! finish with [`crate::text::normalise_whitespace`].

/// Plain text of a Markdown document: headings, emphasis, inline code, links, images, list
/// markers and block quotes lose their syntax; fenced code blocks and horizontal rules go,
/// since code is not prose and would skew the word statistics.
pub fn markdown_to_text(markdown: &str) -> String {
    let mut text = String::with_capacity(markdown.len());
    let mut open_fence: Option<&str> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(fence) = open_fence {
            if trimmed.starts_with(fence) {
                open_fence = None;
            }
            continue;
        }
        if let Some(fence) = ["```", "~~~"].into_iter().find(|f| trimmed.starts_with(f)) {
            open_fence = Some(fence);
            continue;
        }
        if !is_rule(trimmed) {
            text.push_str(&strip_inline(strip_block_marker(trimmed)));
        }
        text.push('\n');
    }
    text
}

/// `---`, `***`, `___`, `- - -`, and the `===` underline of a setext heading.
fn is_rule(line: &str) -> bool {
    let mut marks = line.chars().filter(|c| !c.is_whitespace());
    let Some(first) = marks.next() else {
        return false;
    };
    matches!(first, '-' | '*' | '_' | '=')
        && marks.clone().count() >= 2
        && marks.all(|c| c == first)
}

/// Removes the block-level prefix of a line: block quote `>`, heading `#`, list marker.
fn strip_block_marker(line: &str) -> &str {
    let mut line = line.trim_start();
    while let Some(quoted) = line.strip_prefix('>') {
        line = quoted.trim_start();
    }
    let hashes = line.chars().take_while(|&c| c == '#').count();
    let heading = &line[hashes..];
    if (1..=6).contains(&hashes) && heading.chars().next().is_none_or(char::is_whitespace) {
        let heading = heading.trim();
        // A closing run of `#` only counts after a space, so "Learning C#" keeps its `#`.
        let unclosed = heading.trim_end_matches('#');
        return if unclosed.is_empty() || unclosed.ends_with(' ') {
            unclosed.trim_end()
        } else {
            heading
        };
    }
    for bullet in ["- ", "* ", "+ "] {
        if let Some(item) = line.strip_prefix(bullet) {
            return item.trim_start();
        }
    }
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 {
        let after = &line[digits..];
        if let Some(item) = after
            .strip_prefix(". ")
            .or_else(|| after.strip_prefix(") "))
        {
            return item.trim_start();
        }
    }
    line
}

/// Removes inline syntax: `[text](url)` and `![alt](url)` keep their text, backticks go,
/// `*` and `_` go where they can be emphasis. A `*` between spaces ("5 * 3") and a `_`
/// inside a word (`snake_case`) stay, as they cannot open or close emphasis.
fn strip_inline(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut text = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let bracket = if c == '!' { i + 1 } else { i };
        if chars.get(bracket) == Some(&'[')
            && let Some((label_end, link_end)) = find_link(&chars, bracket)
        {
            let label: String = chars[bracket + 1..label_end].iter().collect();
            text.push_str(&strip_inline(&label));
            i = link_end + 1;
            continue;
        }
        let before = i.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i + 1).copied();
        match c {
            '\\' if after.is_some_and(|next| next.is_ascii_punctuation()) => {
                text.push(chars[i + 1]);
                i += 1;
            }
            '`' => {}
            '*' if !(is_space(before) && is_space(after)) => {}
            '_' if !(is_word(before) && is_word(after)) => {}
            _ => text.push(c),
        }
        i += 1;
    }
    text
}

/// For a `[` at `open`, the positions of the `]` and of the `)` of `[label](target)`.
fn find_link(chars: &[char], open: usize) -> Option<(usize, usize)> {
    let label_end = open + chars[open..].iter().position(|&c| c == ']')?;
    if chars.get(label_end + 1) != Some(&'(') {
        return None;
    }
    let link_end = label_end + chars[label_end..].iter().position(|&c| c == ')')?;
    Some((label_end, link_end))
}

fn is_space(c: Option<char>) -> bool {
    c.is_none_or(char::is_whitespace)
}

fn is_word(c: Option<char>) -> bool {
    c.is_some_and(char::is_alphanumeric)
}

/// Plain text of an HTML document: tags and comments go, `<script>`, `<style>` and `<title>`
/// go with their contents (a title is metadata, and pages repeat it in their first heading),
/// block elements become line breaks so paragraphs survive, and the common
/// entities (`&amp;` `&lt;` `&gt;` `&quot;` `&#39;` `&nbsp;`, plus numeric ones) are decoded.
pub fn html_to_text(html: &str) -> String {
    // Same byte offsets as `html`, for case-insensitive searches.
    let lower = html.to_ascii_lowercase();
    let mut text = String::with_capacity(html.len());
    let mut i = 0;
    while let Some(offset) = html[i..].find('<') {
        let start = i + offset;
        push_collapsed(&mut text, &html[i..start]);
        if html[start..].starts_with("<!--") {
            i = lower[start..]
                .find("-->")
                .map_or(html.len(), |end| start + end + 3);
            continue;
        }
        let closing = html[start + 1..].starts_with('/');
        let name_start = start + 1 + usize::from(closing);
        let name: String = lower[name_start..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        let declaration = html[name_start..].starts_with(['!', '?']);
        if name.is_empty() && !declaration {
            // "a < b" in text: not a tag.
            text.push('<');
            i = start + 1;
            continue;
        }
        let Some(tag_end) = find_tag_end(html, start) else {
            break;
        };
        i = tag_end;
        if !closing && matches!(name.as_str(), "script" | "style" | "title") {
            i = lower[tag_end..]
                .find(&format!("</{name}"))
                .and_then(|close| find_tag_end(html, tag_end + close))
                .unwrap_or(html.len());
            continue;
        }
        text.push_str(block_break(&name, closing));
    }
    push_collapsed(&mut text, &html[i..]);
    decode_entities(&text)
}

/// The byte offset just past the `>` closing the tag that starts at `start`, skipping `>`
/// inside quoted attribute values.
fn find_tag_end(html: &str, start: usize) -> Option<usize> {
    let mut quote = None;
    for (offset, c) in html[start..].char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(open), _) if c == open => quote = None,
            (None, '>') => return Some(start + offset + 1),
            _ => {}
        }
    }
    None
}

/// What an element's tag leaves in the text: a paragraph break around blocks, a line break
/// before each line (list item, row), a space before a table cell, nothing for inline elements.
fn block_break(name: &str, closing: bool) -> &'static str {
    match name {
        "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "section" | "article"
        | "header" | "footer" | "main" | "nav" | "aside" | "blockquote" | "pre" | "ul" | "ol"
        | "table" | "figure" | "hr" => "\n\n",
        // Only the opening tag, or `</li><li>` would put a blank line between items.
        "br" | "li" | "tr" | "dt" | "dd" if !closing => "\n",
        "td" | "th" if !closing => " ",
        _ => "",
    }
}

/// Appends text from the source, where every whitespace run (line breaks included) is one
/// space: in HTML only elements break lines.
fn push_collapsed(text: &mut String, source: &str) {
    for c in source.chars() {
        text.push(if c.is_whitespace() { ' ' } else { c });
    }
}

fn decode_entities(text: &str) -> String {
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        decoded.push_str(&rest[..amp]);
        let entity = &rest[amp..];
        // Entities are short; a far-away `;` belongs to the prose, not to this `&`.
        let found = entity
            .find(';')
            .filter(|&end| end <= 10)
            .and_then(|end| Some((decode_entity(&entity[1..end])?, end)));
        match found {
            Some((c, end)) => {
                decoded.push(c);
                rest = &entity[end + 1..];
            }
            None => {
                decoded.push('&');
                rest = &entity[1..];
            }
        }
    }
    decoded.push_str(rest);
    decoded
}

fn decode_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        // A plain space, so whitespace normalisation treats it like any other.
        "nbsp" => Some(' '),
        _ => {
            let number = name.strip_prefix('#')?;
            let code = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::normalise_whitespace;

    fn markdown(source: &str) -> String {
        normalise_whitespace(&markdown_to_text(source))
    }

    fn html(source: &str) -> String {
        normalise_whitespace(&html_to_text(source))
    }

    #[test]
    fn markdown_headings_emphasis_code_and_links_are_stripped() {
        let source = "# Field *notes*\n\nSee [the guide](https://example.com/guide) and \
                      ![a map](map.png) for `snake_case` names, **bold** and _italic_ text.\n\n\
                      ## Learning C# ##\n";
        assert_eq!(
            markdown(source),
            "Field notes\n\nSee the guide and a map for snake_case names, bold and italic \
             text.\n\nLearning C#"
        );
    }

    #[test]
    fn markdown_lists_quotes_rules_and_code_blocks() {
        let source = "Intro line.\n\n- first item\n* second item\n3. third item\n\n> quoted \
                      words\n\n---\n\n```rust\nlet x = 5 * 3;\n```\nAfter 5 * 3 and \\*stars\\*.\n";
        assert_eq!(
            markdown(source),
            "Intro line.\n\nfirst item\nsecond item\nthird item\n\nquoted words\n\nAfter 5 * 3 \
             and *stars*."
        );
    }

    #[test]
    fn html_tags_scripts_styles_and_entities() {
        let source = "<!DOCTYPE html><html><head><title>Tides</title>\
                      <style>p { color: red; }</style></head>\
                      <body><!-- hidden --><h1>Tides &amp; Moons</h1>\n  <p class=\"a>b\">The \
                      moon&#39;s pull &lt;matters&gt;,\n   &quot;always&quot;.</p>\
                      <SCRIPT>alert('<p>no</p>')</SCRIPT><ul><li>one</li><li>two&nbsp;words</li></ul>\
                      <p>&#x41;&#66; &unknown; a < b</p></body></html>";
        assert_eq!(
            html(source),
            "Tides & Moons\n\nThe moon's pull <matters>, \"always\".\n\none\ntwo \
             words\n\nAB &unknown; a < b"
        );
    }
}
