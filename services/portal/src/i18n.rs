//! English and Simplified Chinese: chosen by a `lang` cookie (the switch) or the browser's
//! Accept-Language; money and dates formatted for the language.

use rust_decimal::Decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Zh => "zh-CN",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        if s.starts_with("zh") {
            Some(Self::Zh)
        } else if s.starts_with("en") {
            Some(Self::En)
        } else {
            None
        }
    }

    /// From a `lang` cookie, else the first Accept-Language entry we speak, else English.
    pub fn choose(cookie: Option<&str>, accept: Option<&str>) -> Self {
        if let Some(l) = cookie.and_then(Self::parse) {
            return l;
        }
        let mut langs: Vec<(f32, &str)> = accept
            .unwrap_or_default()
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let tag = it.next()?.trim();
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .and_then(|q| q.parse().ok())
                    .unwrap_or(1.0);
                Some((q, tag))
            })
            .collect();
        langs.sort_by(|a, b| b.0.total_cmp(&a.0));
        langs
            .into_iter()
            .find_map(|(_, t)| Self::parse(t))
            .unwrap_or(Self::En)
    }

    /// A decimal with grouped thousands and two decimals, then the currency.
    pub fn money(self, amount: &str, currency: &str) -> String {
        let Ok(d) = amount.parse::<Decimal>() else {
            return format!("{amount} {currency}");
        };
        let s = d
            .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
            .abs()
            .to_string();
        let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
        let mut grouped = String::new();
        for (i, c) in int.chars().enumerate() {
            if i > 0 && (int.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        let frac = format!("{frac:0<2}");
        let sign = if d.is_sign_negative() && !d.is_zero() {
            "-"
        } else {
            ""
        };
        match self {
            Self::En => format!("{sign}{grouped}.{frac} {currency}"),
            Self::Zh => format!("{sign}{grouped}.{frac} {currency}"),
        }
    }

    pub fn date(self, t: chrono::DateTime<chrono::Utc>) -> String {
        match self {
            Self::En => t.format("%-d %b %Y").to_string(),
            Self::Zh => t.format("%Y年%-m月%-d日").to_string(),
        }
    }

    /// The text of `key` in this language.
    pub fn t(self, key: &str) -> &'static str {
        let (en, zh) = match key {
            "title" => ("SPM — your numbers", "SPM — 我的业绩"),
            "skip" => ("Skip to content", "跳到正文"),
            "company" => ("Company", "公司"),
            "company_hint" => (
                "Your company's SPM id, e.g. acme",
                "贵公司的 SPM 标识，例如 acme",
            ),
            "continue" => ("Continue to sign-in", "继续登录"),
            "sign_out" => ("Sign out", "退出"),
            "signed_in_as" => ("Signed in as", "当前用户"),
            "this_period" => ("This period", "本期"),
            "earned" => ("Earnings", "收入"),
            "attainment" => ("Attainment", "目标达成率"),
            "score" => ("Score", "考核得分"),
            "revenue" => ("Revenue", "销售额"),
            "rank" => ("Rank", "排名"),
            "feed" => ("What just happened", "最新动态"),
            "date" => ("Date", "日期"),
            "leaderboard" => ("Leaderboard by revenue", "销售额排行榜"),
            "statement" => ("Statement", "业绩单"),
            "line" => ("Line", "明细"),
            "kind" => ("Kind", "类别"),
            "amount" => ("Amount", "金额"),
            "status" => ("Status", "状态"),
            "how" => ("How it was computed", "计算方式"),
            "open_line" => ("Open", "查看"),
            "postings" => ("Postings", "记账记录"),
            "trace" => ("Calculation", "计算过程"),
            "dispute" => ("Question this line", "对此明细提出异议"),
            "reason" => ("What is wrong?", "问题是什么？"),
            "send" => ("Send", "提交"),
            "dispute_sent" => (
                "Your question was sent to your manager.",
                "您的异议已提交给经理。",
            ),
            "no_lines" => ("No earnings in this period yet.", "本期暂无收入。"),
            "back" => ("Back to my numbers", "返回我的业绩"),
            "language" => ("中文", "English"),
            "no_rep_title" => (
                "You are signed in, but not set up as a rep",
                "您已登录，但尚未设置为销售代表",
            ),
            "no_rep_body" => (
                "Your sign-in worked, but this company's SPM does not know you as a rep or give you a role. Ask your compensation administrator to add your e-mail to your rep record or to grant you a role, then sign in again.",
                "登录成功，但本公司的 SPM 中没有与您对应的销售代表，也没有为您分配角色。请联系薪酬管理员，将您的邮箱加入销售代表资料或为您分配角色，然后重新登录。",
            ),
            "denied_title" => ("This is not yours to see", "您无权查看此内容"),
            "denied_body" => (
                "Your role does not allow this page. Reps see their own numbers and managers their teams. If you think you should see it, ask your compensation administrator.",
                "您的角色不允许查看此页面。销售代表只能查看自己的业绩，经理只能查看其团队。如有疑问，请联系薪酬管理员。",
            ),
            "expired_title" => ("Please sign in again", "请重新登录"),
            "csrf_title" => ("This form has expired", "此表单已失效"),
            "csrf_body" => (
                "The form was not sent from this session's page. Go back, reload the page and send it again.",
                "该表单不是从当前会话的页面提交的。请返回并刷新页面后重新提交。",
            ),
            "not_found_title" => ("Not found", "未找到"),
            "not_found_body" => (
                "There is nothing at this address for you. Check the link, or go back to your numbers.",
                "此地址没有可供您查看的内容。请检查链接，或返回我的业绩。",
            ),
            "unavailable_title" => ("SPM is busy", "SPM 暂时不可用"),
            "unavailable_body" => (
                "A part of SPM did not answer. Wait a moment and reload the page.",
                "SPM 的某个部分暂时没有响应。请稍候再刷新页面。",
            ),
            "signin_title" => ("Sign-in did not work", "登录未成功"),
            "signin_body" => (
                "Your company's sign-in did not complete. Start again from the sign-in page; if it keeps failing, tell your IT help desk what this page says.",
                "公司登录未能完成。请从登录页重新开始；如果仍然失败，请将本页内容告知 IT 支持。",
            ),
            "invalid_title" => ("Please check the form", "请检查表单"),
            "unknown_company" => (
                "No sign-in is set up for this company id. Check the spelling, or ask your administrator for your company's id.",
                "未找到此公司标识的登录设置。请检查拼写，或向管理员询问贵公司的标识。",
            ),
            _ => ("", ""),
        };
        match self {
            Self::En => en,
            Self::Zh => zh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_from_cookie_then_accept_language() {
        assert_eq!(
            Lang::choose(None, Some("zh-CN,zh;q=0.9,en;q=0.8")),
            Lang::Zh
        );
        assert_eq!(Lang::choose(None, Some("fr-FR, en;q=0.5")), Lang::En);
        assert_eq!(
            Lang::choose(None, Some("de;q=1, zh;q=0.7, en;q=0.6")),
            Lang::Zh
        );
        assert_eq!(Lang::choose(Some("en"), Some("zh-CN")), Lang::En);
        assert_eq!(Lang::choose(None, None), Lang::En);
    }

    #[test]
    fn money_is_grouped_and_rounded() {
        assert_eq!(Lang::En.money("1604.625", "EUR"), "1,604.63 EUR");
        assert_eq!(Lang::En.money("-3", "EUR"), "-3.00 EUR");
        assert_eq!(Lang::Zh.money("1234567.5", "CNY"), "1,234,567.50 CNY");
        assert_eq!(Lang::En.money("oops", "EUR"), "oops EUR");
    }

    #[test]
    fn every_key_has_both_languages() {
        for k in [
            "title",
            "dispute",
            "no_rep_body",
            "denied_body",
            "csrf_body",
            "unknown_company",
        ] {
            assert!(
                !Lang::En.t(k).is_empty() && !Lang::Zh.t(k).is_empty(),
                "{k}"
            );
        }
    }
}
