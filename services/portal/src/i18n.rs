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

    /// An earning kind's name (commission, bonus...).
    pub fn earning_kind(self, k: i32) -> String {
        let code = spm_proto::ext::earning_kind_name(k);
        let zh = match code.as_str() {
            "commission" => "提成",
            "bonus" => "奖金",
            "spiff" => "专项激励",
            "clawback" => "追回",
            "adjustment" => "调整",
            _ => "",
        };
        self.pick(code, zh)
    }

    /// An earning status's name (earned, payable...).
    pub fn earning_status(self, st: i32) -> String {
        let code = spm_proto::ext::earning_status_name(st);
        let zh = match code.as_str() {
            "earned" => "已赚取",
            "payable" => "待发放",
            "held" => "暂扣",
            "paid" => "已发放",
            "reversed" => "已冲回",
            _ => "",
        };
        self.pick(code, zh)
    }

    /// A dispute's status (open, rejected, accepted).
    pub fn dispute_status(self, st: i32) -> String {
        use spm_proto::incentive::v1::DisputeStatus as D;
        let (en, zh) = match D::try_from(st) {
            Ok(D::Open) => ("open", "待处理"),
            Ok(D::Rejected) => ("rejected", "已驳回"),
            Ok(D::Accepted) => ("accepted", "已接受"),
            _ => ("", ""),
        };
        self.pick(en.to_owned(), zh)
    }

    /// A goal calibration's verdict, said for a manager.
    pub fn verdict(self, v: i32) -> &'static str {
        use spm_proto::scoring::v1::CalibrationVerdict as V;
        let (en, zh) = match V::try_from(v) {
            Ok(V::Plausible) => ("The goals look plausible.", "目标设定合理。"),
            Ok(V::TooHigh) => (
                "The goals look too high: few are on track to be met.",
                "目标可能过高：能按进度完成的很少。",
            ),
            Ok(V::TooLow) => (
                "The goals look too easy: nearly all are on track to be beaten.",
                "目标可能过低：几乎所有人都会超额完成。",
            ),
            Ok(V::TooEarly) => (
                "Too early in the period to judge the goals.",
                "本期刚开始，尚无法判断目标是否合理。",
            ),
            Ok(V::NoGoals) => (
                "No revenue goals are set for this period.",
                "本期未设置销售额目标。",
            ),
            _ => ("", ""),
        };
        match self {
            Self::En => en,
            Self::Zh => zh,
        }
    }

    /// A metric's name (revenue, deals won...).
    pub fn metric(self, code: &str) -> String {
        let zh = match code {
            "revenue" => "销售额",
            "deals_won" => "成交单数",
            "avg_deal_size" => "平均单笔金额",
            "amount_due" => "应收金额",
            "collected" => "已回款",
            "collection_rate" => "回款率",
            "amount_collected" => "回款金额",
            "csat_avg" => "客户满意度",
            "nps" => "净推荐值",
            "visits" => "拜访",
            "calls" => "电话",
            "meetings" => "会议",
            "emails" => "邮件",
            "demos" => "演示",
            "contracts_signed" => "签约",
            "after_sales_resolved" => "售后解决",
            "trainings_completed" => "完成培训",
            _ => "",
        };
        self.pick(code.replace('_', " "), zh)
    }

    fn pick(self, en: String, zh: &str) -> String {
        match self {
            Self::Zh if !zh.is_empty() => zh.to_owned(),
            _ => en,
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
            "sections" => ("Sections", "栏目"),
            "nav_home" => ("My numbers", "我的业绩"),
            "nav_team" => ("My team", "我的团队"),
            "nav_plans" => ("Plans", "薪酬方案"),
            "nav_periods" => ("Periods", "结算期"),
            "nav_disputes" => ("Questions", "异议处理"),
            "next_tier" => ("Next tier", "下一档"),
            "next_tier_text" => (
                "{rate} from {needed} more revenue",
                "再完成 {needed} 销售额，提成比例升至 {rate}",
            ),
            "top_tier" => ("Top tier reached", "已达最高档"),
            "kpis" => ("Score breakdown", "考核得分明细"),
            "kpi" => ("KPI", "指标"),
            "value" => ("Value", "数值"),
            "points" => ("Points", "得分"),
            "weight" => ("Weight", "权重"),
            "awards" => ("Badges and promotion", "荣誉与晋升"),
            "no_awards" => (
                "No badges yet. Badges and promotion eligibility are granted by your plan's rules, mostly when a period closes.",
                "暂无荣誉。荣誉和晋升资格按方案规则授予，多数在结算期结束时授予。",
            ),
            "promotion_yes" => ("Eligible for promotion", "已具备晋升资格"),
            "my_disputes" => ("Questions on my lines", "我提出的异议"),
            "questions" => ("Questions", "异议"),
            "earlier_line" => ("a line of an earlier period", "以前结算期的明细"),
            "answer" => ("Answer", "答复"),
            "adjustment" => ("Adjustment", "调整金额"),
            "chart" => ("Earnings and attainment by period", "各期收入与目标达成率"),
            "period" => ("Period", "结算期"),
            "whatif" => ("What would a deal earn?", "这笔交易能带来多少收入？"),
            "whatif_amount" => ("Deal amount", "交易金额"),
            "whatif_hint" => (
                "What the deal would close at, in {cur}, e.g. 25000",
                "预计成交金额（{cur}），例如 25000",
            ),
            "estimate" => ("Estimate", "估算"),
            "whatif_title" => ("If this deal closes today", "如果这笔交易今天成交"),
            "now" => ("Now", "当前"),
            "with_deal" => ("With the deal", "成交后"),
            "difference" => ("Difference", "差额"),
            "changed_lines" => ("Lines that change", "会变化的明细"),
            "rep" => ("Rep", "销售代表"),
            "whatif_no_plan" => (
                "No plan covers you this period, so there is nothing to estimate. Ask your compensation administrator.",
                "本期没有适用于您的薪酬方案，无法估算。请联系薪酬管理员。",
            ),
            "team_rollup" => ("Team figures this period", "本期团队指标"),
            "metric" => ("Metric", "指标"),
            "reps_count" => ("reps", "名销售"),
            "alerts" => ("Process alerts", "过程预警"),
            "no_alerts" => ("No process alerts.", "暂无过程预警。"),
            "alert_text" => (
                "{rep}: {metric} {actual} in {window}, {expected} expected by the goal's pace",
                "{rep}：{window} 内 {metric} 为 {actual}，按目标进度应达到 {expected}",
            ),
            "calibration" => ("Goal calibration: revenue", "目标校准：销售额"),
            "projected" => ("Projected attainment", "预计达成率"),
            "target" => ("Target", "目标"),
            "on_track" => ("On track", "进度正常"),
            "behind" => ("Behind", "落后"),
            "no_team" => (
                "You do not manage a team in SPM yet. Ask your compensation administrator to set you as a team's manager.",
                "您在 SPM 中尚未管理任何团队。请联系薪酬管理员将您设为团队经理。",
            ),
            "open_questions" => ("Open questions from your team", "团队待处理的异议"),
            "plans_title" => ("Compensation plans", "薪酬方案"),
            "state" => ("State", "状态"),
            "st_draft" => ("Draft", "草稿"),
            "st_shadow" => ("In shadow", "影子运行"),
            "st_pending" => ("Awaiting approval", "待审批"),
            "st_live" => ("Live", "生效中"),
            "st_retired" => ("Retired", "已停用"),
            "approvals_of" => ("{have} of {need} approvals", "已批准 {have}/{need}"),
            "compare" => ("Compare with live", "与现行方案对比"),
            "compare_title" => (
                "{plan} version {version} against the live plans",
                "{plan} 第 {version} 版与现行方案对比",
            ),
            "compare_intro" => (
                "What this version would pay, computed from the same events as they arrive, beside what the live plans pay. Nothing here is paid or notified.",
                "该版本按实时事件计算的应付金额，与现行方案并列对比。此处金额不会发放，也不会通知。",
            ),
            "in_shadow_since" => ("In shadow since {since}", "自 {since} 起影子运行"),
            "live" => ("Live", "现行"),
            "shadow" => ("Shadow", "影子"),
            "total" => ("Total", "合计"),
            "save_draft" => ("Save as draft", "保存为草稿"),
            "plan_refused" => ("That change was not made", "该操作未执行"),
            "act_shadow" => ("Run in shadow", "影子运行"),
            "act_propose" => ("Propose for approval", "提交审批"),
            "act_approve" => ("Approve", "批准"),
            "act_draft" => ("Back to draft", "退回草稿"),
            "act_reject" => ("Send back", "驳回"),
            "act_retire" => ("Retire", "停用"),
            "plan_reason" => ("Reason", "原因"),
            "actions" => ("Actions", "操作"),
            "plan_moved" => (
                "{plan} version {version}: done.",
                "{plan} 第 {version} 版：已处理。",
            ),
            "nothing_shadowed" => (
                "Neither ledger holds anything for this period yet.",
                "该期间两个账本均暂无记录。",
            ),
            "version" => ("Version", "版本"),
            "effective_from" => ("Effective from", "生效日期"),
            "created" => ("Created", "创建时间"),
            "new_version" => ("New version", "新建版本"),
            "new_plan" => ("New plan", "新建方案"),
            "no_plans" => ("No plans yet.", "暂无薪酬方案。"),
            "plan_saved" => (
                "Saved {plan} version {version}. Open periods were recomputed with it.",
                "已保存 {plan} 第 {version} 版，未结算的期间已按新版本重新计算。",
            ),
            "plan_edit" => ("Plan {plan}", "方案 {plan}"),
            "plan_based_on" => (
                "A new version of {plan}, starting from version {version}. Gates, bonuses, SPIFFs, badges and the promotion rule are kept from that version.",
                "基于第 {version} 版新建 {plan} 的版本。门槛条件、奖金、专项激励、荣誉和晋升规则沿用该版本。",
            ),
            "f_plan" => ("Plan", "方案"),
            "f_plan_id" => ("Plan id", "方案标识"),
            "f_name" => ("Name", "名称"),
            "f_effective_from" => ("Effective from (YYYY-MM-DD)", "生效日期（YYYY-MM-DD）"),
            "f_period_kind" => ("Period", "结算周期"),
            "month" => ("Month", "月"),
            "quarter" => ("Quarter", "季度"),
            "f_assignment" => ("Who it applies to", "适用范围"),
            "f_tenant_default" => ("Everyone without another plan", "所有未分配其他方案的人员"),
            "f_team_ids" => ("Teams (ids, comma-separated)", "团队（标识，逗号分隔）"),
            "f_rep_ids" => ("Reps (ids, comma-separated)", "销售代表（标识，逗号分隔）"),
            "f_commission" => ("Commission", "提成"),
            "f_basis" => ("Tiers measured by", "分档依据"),
            "basis_attainment" => ("Attainment (share of quota)", "目标达成率（占定额比例）"),
            "basis_cumulative" => ("Cumulative revenue (amount)", "累计销售额（金额）"),
            "f_mode" => ("How a tier's rate applies", "档位比例的适用方式"),
            "mode_marginal" => (
                "Marginal: each slice at its tier's rate",
                "分段累进：每段按所在档位计",
            ),
            "mode_retroactive" => (
                "Retroactive: all revenue at the reached tier's rate",
                "全额追溯：全部按达到的档位计",
            ),
            "f_quota" => ("Quota", "定额"),
            "f_threshold" => (
                "Threshold (share of quota from which commission is paid)",
                "起付线（达到定额的比例后才计提成）",
            ),
            "f_per_deal_cap" => ("Cap per deal", "单笔上限"),
            "f_period_cap" => ("Cap per period", "每期上限"),
            "eg_50" => ("e.g. 50", "例如 50"),
            "f_tiers" => ("Tiers", "提成档位"),
            "f_tier_from" => ("Tier {n} starts at", "第 {n} 档起点"),
            "f_tier_rate" => ("Tier {n} rate", "第 {n} 档比例"),
            "f_tiers_hint" => (
                "Starts are shares of quota (1 = 100%) or amounts on the cumulative basis; rates are decimals (0.08 = 8%). Leave a row empty to drop it.",
                "起点为定额比例（1 = 100%），累计销售额依据时为金额；比例为小数（0.08 = 8%）。整行留空即删除该档。",
            ),
            "f_payout" => ("Payout", "发放方式"),
            "f_at_close" => ("Percent payable at close", "成交时可发放的百分比"),
            "f_on_collection" => ("Percent payable on collection", "回款时可发放的百分比"),
            "f_clawback" => ("Clawback window (days)", "追回期（天）"),
            "whole_days" => ("must be a whole number of days", "必须是整数天数"),
            "simulate" => ("Simulate against the current plan", "与现行方案对比模拟"),
            "save_version" => ("Save as a new version", "保存为新版本"),
            "sim_title" => ("Simulation for {period}", "{period} 模拟结果"),
            "sim_summary" => (
                "{reps} reps, {deals} deals: {current} now, {draft} with the draft ({difference}). Nothing was saved.",
                "{reps} 名销售、{deals} 笔交易：现行 {current}，草案 {draft}（差额 {difference}）。未保存任何内容。",
            ),
            "current" => ("Current", "现行"),
            "draft" => ("Draft", "草案"),
            "errors_title" => (
                "Please correct the marked fields. Nothing was saved.",
                "请更正标出的字段。未保存任何内容。",
            ),
            "nav_audit" => ("Audit", "审计"),
            "audit_title" => ("Audit trail", "审计记录"),
            "audit_intro" => (
                "Every change made by an admin in SPM, newest first: who made it, when, what it was before and after, and the request's trace. The records are append-only and hash-chained, like the earnings ledger.",
                "SPM 中管理员所做的每一项变更（最新在前）：由谁、何时、变更前后的内容以及请求的追踪号。记录只可追加并以哈希链相连，与收入账本相同。",
            ),
            "audit_verify_intro" => (
                "Recompute every ledger posting's hash, every chain head and period seal, and every service's audit chain.",
                "重新计算每条账本记账的哈希、每条链的链头与结算封印，以及每个服务的审计链。",
            ),
            "audit_verify" => ("Verify now", "立即校验"),
            "audit_checks" => ("Verification", "校验结果"),
            "audit_intact" => ("Intact", "完好"),
            "audit_broken" => ("Broken", "已被篡改"),
            "audit_ledger" => (
                "Earnings ledger postings ({chains} chains, {seals} seals)",
                "收入账本记账（{chains} 条链，{seals} 个封印）",
            ),
            "audit_trail_of" => (
                "Audit trail of {service}: events",
                "{service} 的审计记录：条数",
            ),
            "audit_f_action" => (
                "Action (or a prefix ending in “.”)",
                "操作（或以“.”结尾的前缀）",
            ),
            "audit_f_actor" => ("Who (key:… or person:…)", "操作人（key:… 或 person:…）"),
            "audit_f_since" => ("Since (YYYY-MM-DD)", "起始日期（YYYY-MM-DD）"),
            "audit_bad_since" => (
                "Enter a date as YYYY-MM-DD (or an RFC 3339 time).",
                "请按 YYYY-MM-DD 输入日期（或 RFC 3339 时间）。",
            ),
            "audit_filter" => ("Show", "筛选"),
            "audit_none" => ("No recorded changes match.", "没有符合条件的变更记录。"),
            "audit_events" => ("Recorded changes, newest first", "变更记录（最新在前）"),
            "audit_when" => ("When", "时间"),
            "audit_who" => ("Who", "操作人"),
            "audit_what" => ("What", "操作"),
            "audit_change" => ("Change", "变更"),
            "audit_before_after" => ("Before and after", "变更前后"),
            "audit_before" => ("Before", "变更前"),
            "audit_after" => ("After", "变更后"),
            "periods_title" => ("Close and pay periods", "结算与发放"),
            "periods_intro" => (
                "Closing a period settles held amounts, badges and promotion eligibility and freezes it: later changes go to the next period as adjustments. Mark a closed period paid once payroll has paid it.",
                "结算会处理暂扣金额、荣誉和晋升资格并冻结该期：之后的变动会作为调整计入下一期。薪资发放后，再将已结算的期间标记为已支付。",
            ),
            "f_period_key" => (
                "Period (e.g. 2026-11 or FY2027-Q1)",
                "结算期（例如 2026-11 或 FY2027-Q1）",
            ),
            "close_period" => ("Close the period", "结算该期"),
            "mark_paid" => ("Mark paid", "标记为已支付"),
            "closed_msg" => (
                "Closed {key}: {reps} reps, {postings} postings, {awards} awards.",
                "已结算 {key}：{reps} 名销售、{postings} 条记账、{awards} 项荣誉。",
            ),
            "paid_msg" => (
                "Marked {key} paid: {reps} reps, {paid} in total.",
                "已将 {key} 标记为已支付：{reps} 名销售，共 {paid}。",
            ),
            "close_refused" => (
                "{key} is already closed. Changes to it now go to the next period.",
                "{key} 已结算，之后的变动将计入下一期。",
            ),
            "paid_refused" => (
                "{key} cannot be marked paid: close it first, and a period is marked paid only once.",
                "无法将 {key} 标记为已支付：请先结算；每个期间只能标记一次。",
            ),
            "disputes_title" => ("Questions on lines", "异议处理"),
            "no_disputes" => ("No questions.", "暂无异议。"),
            "opened" => ("Opened", "提出时间"),
            "decision" => ("Decision", "处理结果"),
            "accept" => ("Accept, with an adjustment", "接受并调整"),
            "reject" => ("Reject", "驳回"),
            "adjustment_hint" => (
                "The amount to add (or subtract, with a minus sign), e.g. 150.00",
                "增加的金额（减少请加负号），例如 150.00",
            ),
            "resolve" => ("Send the answer", "提交处理结果"),
            "resolved_msg" => (
                "The answer was sent to the rep.",
                "处理结果已发送给销售代表。",
            ),
            "resolved_by" => ("Answered by", "处理人"),
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
    fn names_of_kinds_and_statuses_in_both_languages() {
        use spm_proto::events::v1::{EarningKind, EarningStatus};
        assert_eq!(Lang::En.earning_kind(EarningKind::Spiff as i32), "spiff");
        assert_eq!(Lang::Zh.earning_kind(EarningKind::Spiff as i32), "专项激励");
        assert_eq!(Lang::Zh.earning_status(EarningStatus::Held as i32), "暂扣");
        assert_eq!(Lang::En.earning_status(EarningStatus::Held as i32), "held");
        assert_eq!(Lang::Zh.dispute_status(1), "待处理");
        for v in 1..=5 {
            assert!(!Lang::Zh.verdict(v).is_empty() && !Lang::En.verdict(v).is_empty());
        }
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
        // Every key the templates and pages use.
        let used = [
            include_str!("../templates/base.html"),
            include_str!("../templates/home.html"),
            include_str!("../templates/line.html"),
            include_str!("../templates/index.html"),
            include_str!("../templates/message.html"),
            include_str!("../templates/team.html"),
            include_str!("../templates/plans.html"),
            include_str!("../templates/plan.html"),
            include_str!("../templates/periods.html"),
            include_str!("../templates/disputes.html"),
            include_str!("../templates/whatif.html"),
            include_str!("pages.rs"),
            include_str!("team.rs"),
            include_str!("admin.rs"),
        ];
        let mut keys = Vec::new();
        for text in used {
            for (i, _) in text.match_indices(".t(\"") {
                let rest = &text[i + 4..];
                if let Some(end) = rest.find('"') {
                    keys.push(rest[..end].to_owned());
                }
            }
        }
        assert!(keys.len() > 100, "{} keys found", keys.len());
        for k in keys.iter().map(String::as_str) {
            assert!(
                !Lang::En.t(k).is_empty() && !Lang::Zh.t(k).is_empty(),
                "{k}"
            );
        }
    }
}
