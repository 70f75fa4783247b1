//! Content filter for outbound messages (docs/compliance.md#content-filter).
//!
//! Every text is normalised (NFKC, lower case, leetspeak `0→o 1→i 3→e 4→a 5→s 7→t @→a $→s`,
//! `. * - _` dropped between letters), then matched on word boundaries, a space in a pattern
//! standing for one or more whitespace characters. Threats are checked before prohibited words.

use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// Why a message is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    Threat,
    ProhibitedLanguage,
}

impl Violation {
    /// The refusal text of the contract.
    pub fn message(self) -> &'static str {
        match self {
            Self::Threat => "Compliance: Message contains threatening content",
            Self::ProhibitedLanguage => "Compliance: Message contains prohibited language",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Threat => "threat",
            Self::ProhibitedLanguage => "prohibited_language",
        }
    }
}

const THREATS: &[&str] = &[
    "(kill|murder|bomb|shoot|stab) (you|u|them|him|her|everyone|y'?all)",
    "(i'?ll|i will|i'?m going to|i am going to|we'?ll|we will|gonna) (hurt|harm|attack|beat|destroy) (you|u|them|him|her|your)",
    "(kill|hang|shoot) (yourself|urself)",
    "go die",
    "you('?re| are) (going to|gonna) die",
];

const WORDS: &[&str] = &[
    "fuck",
    "fuk",
    "fck",
    "fucking",
    "fucker",
    "motherfucker",
    "shit",
    "shite",
    "bullshit",
    "bitch",
    "asshole",
    "dickhead",
    "cunt",
    "cocksucker",
    "nigger",
    "faggot",
    "retard",
    "kike",
    "spic",
    "chink",
    "wetback",
    "tranny",
];

/// One regex over alternatives, anchored on word boundaries; a space means `\s+`.
fn word_bounded(patterns: &[&str]) -> Regex {
    let alternatives: Vec<String> = patterns.iter().map(|p| format!("(?:{})", p.replace(' ', r"\s+"))).collect();
    Regex::new(&format!(r"\b(?:{})\b", alternatives.join("|"))).expect("static content-filter pattern")
}

static THREAT: LazyLock<Regex> = LazyLock::new(|| word_bounded(THREATS));
static PROHIBITED: LazyLock<Regex> = LazyLock::new(|| word_bounded(WORDS));

fn is_separator(c: char) -> bool {
    matches!(c, '.' | '*' | '-' | '_')
}

/// NFKC, lower case, leetspeak folded; typographic apostrophes become `'` ("I’ll" reads as "I'll").
fn fold(text: &str) -> String {
    text.nfkc()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            '0' => 'o',
            '1' => 'i',
            '3' => 'e',
            '4' => 'a',
            '5' => 's',
            '7' => 't',
            '@' => 'a',
            '$' => 's',
            '\u{2018}' | '\u{2019}' => '\'',
            c => c,
        })
        .collect()
}

/// Drops every run of `. * - _` that stands between two letters ("f.u.c.k" → "fuck").
fn drop_separators(folded: &str) -> String {
    let chars: Vec<char> = folded.chars().collect();
    let mut out = String::with_capacity(folded.len());
    let mut i = 0;
    while i < chars.len() {
        if !is_separator(chars[i]) {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let end = chars[i..].iter().position(|&c| !is_separator(c)).map_or(chars.len(), |n| i + n);
        let between_letters = out.chars().next_back().is_some_and(char::is_alphabetic)
            && chars.get(end).is_some_and(|c| c.is_alphabetic());
        if !between_letters {
            out.extend(&chars[i..end]);
        }
        i = end;
    }
    out
}

/// Screens every given text (body, subject, HTML text...). Threats are looked for in all texts
/// before prohibited words, so a threat anywhere wins over a prohibited word anywhere.
///
/// Each text is matched in its normal form and, as well, before separators are dropped: the
/// normal form alone would let "fuck-up" through, its separator being dropped into "fuckup".
pub fn screen<'a>(texts: impl IntoIterator<Item = &'a str>) -> Option<Violation> {
    let forms: Vec<String> = texts
        .into_iter()
        .flat_map(|text| {
            let folded = fold(text);
            [drop_separators(&folded), folded]
        })
        .collect();
    if forms.iter().any(|t| THREAT.is_match(t)) {
        Some(Violation::Threat)
    } else if forms.iter().any(|t| PROHIBITED.is_match(t)) {
        Some(Violation::ProhibitedLanguage)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract's normal form.
    fn normalize(text: &str) -> String {
        drop_separators(&fold(text))
    }

    fn check(cases: &[(&str, Option<Violation>)]) {
        for &(text, expected) in cases {
            assert_eq!(screen([text]), expected, "{text:?} (normalised {:?})", normalize(text));
        }
    }

    #[test]
    fn normalisation() {
        for (raw, normal) in [
            ("F.U.C.K", "fuck"),
            ("sh1t", "shit"),
            ("b*i*t*c*h", "bitch"),
            ("a--b__c", "abc"),
            ("ｆｕｃｋ", "fuck"),
            ("$h1t @ 5", "shit a s"),
            ("end. next", "end. next"),
            ("-a- 3.5", "-a- es"),
            ("I\u{2019}ll", "i'll"),
            ("...", "..."),
            ("", ""),
        ] {
            assert_eq!(normalize(raw), normal, "{raw:?}");
        }
    }

    #[test]
    fn innocent_sentences_pass() {
        check(&[
            ("no harm done", None),
            ("Does it hurt?", None),
            ("Please don't die, please", None),
            ("I will call you tomorrow", None),
            ("Tom & cat", None),
            ("Skills: shooting photos", None),
            ("Scunthorpe", None),
            ("class", None),
            ("assess", None),
            ("spice", None),
            ("Dickens", None),
            ("Your appointment is at 10:30 on 5/7.", None),
            ("We will beat any price", None),
            ("Don't forget to go dine with us", None),
            ("You are going to love it", None),
            ("Hi Tom, your order #4471 shipped", None),
            ("", None),
        ]);
    }

    #[test]
    fn threats() {
        use Violation::Threat;
        check(&[
            ("I will kill you", Some(Threat)),
            ("KILL YOU", Some(Threat)),
            ("k1ll y0u", Some(Threat)),
            ("murder them all", Some(Threat)),
            ("bomb everyone", Some(Threat)),
            ("shoot y'all", Some(Threat)),
            ("stab yall", Some(Threat)),
            ("kill u", Some(Threat)),
            ("I'll hurt you", Some(Threat)),
            ("I\u{2019}ll hurt you", Some(Threat)),
            ("ill harm him", Some(Threat)),
            ("i'm going to attack her", Some(Threat)),
            ("I am going to beat them", Some(Threat)),
            ("we'll destroy your business", Some(Threat)),
            ("We will hurt u", Some(Threat)),
            ("gonna harm them", Some(Threat)),
            ("go kill yourself", Some(Threat)),
            ("hang urself", Some(Threat)),
            ("go die", Some(Threat)),
            ("go   die", Some(Threat)),
            ("go\n\tdie", Some(Threat)),
            ("you're gonna die", Some(Threat)),
            ("youre going to die", Some(Threat)),
            ("you are gonna die", Some(Threat)),
            ("Call me. Or else I'll hurt you.", Some(Threat)),
        ]);
    }

    #[test]
    fn each_prohibited_word_and_evasions() {
        for word in WORDS {
            assert_eq!(screen([*word]), Some(Violation::ProhibitedLanguage), "{word}");
            let sentence = format!("Well, {} it is.", word.to_uppercase());
            assert_eq!(screen([sentence.as_str()]), Some(Violation::ProhibitedLanguage), "{sentence}");
        }
        use Violation::ProhibitedLanguage as P;
        check(&[
            ("f.u.c.k", Some(P)),
            ("sh1t", Some(P)),
            ("b*i*t*c*h", Some(P)),
            ("ｆｕｃｋ", Some(P)),
            ("$hit happens", Some(P)),
            ("what the f_u_c_k", Some(P)),
            ("a$$hole", Some(P)),
            ("what a fuck-up", Some(P)),
            ("shit-faced", Some(P)),
            ("a bull.shit story", Some(P)),
            ("fucks", None),
        ]);
    }

    #[test]
    fn threats_win_over_words_across_texts() {
        assert_eq!(screen(["shit", "go die"]), Some(Violation::Threat));
        assert_eq!(screen(["hello", "bullshit"]), Some(Violation::ProhibitedLanguage));
        assert_eq!(screen(["hello", "world"]), None);
        assert_eq!(screen(Vec::<&str>::new()), None);
        assert_eq!(Violation::Threat.message(), "Compliance: Message contains threatening content");
        assert_eq!(Violation::ProhibitedLanguage.message(), "Compliance: Message contains prohibited language");
        assert_eq!(Violation::Threat.as_str(), "threat");
        assert_eq!(Violation::ProhibitedLanguage.as_str(), "prohibited_language");
    }
}
