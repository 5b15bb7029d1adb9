//! A small, dependency-free SVG line chart: z against attack level for one
//! attack, blind and informed, with the wrong key and the threshold.
//!
//! The y axis is logarithmic (z spans 0.1 to 10^4 between blind and informed
//! detection); z below 0.1 is drawn at 0.1. Levels are placed at even steps in
//! the order measured, labelled with their values.

use std::fmt::Write;

use super::Row;

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Renders the rows of one attack (in measurement order) as an SVG document.
pub fn plot(title: &str, level_name: &str, rows: &[&Row], threshold_z: f64) -> String {
    let zs = rows
        .iter()
        .flat_map(|r| [Some(r.blind_z), r.informed_z, Some(r.wrong_key_blind_z)])
        .flatten();
    let max_z = zs.fold(threshold_z, f64::max).max(10.0);
    let (lo, hi) = (-1.0, max_z.log10().ceil());
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |i: usize| {
        if rows.len() <= 1 {
            LEFT + plot_w / 2.0
        } else {
            LEFT + plot_w * i as f64 / (rows.len() - 1) as f64
        }
    };
    let y = |z: f64| TOP + plot_h * (1.0 - (z.max(0.1).log10() - lo) / (hi - lo));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and y ticks at powers of ten.
    let mut p = lo as i32;
    while f64::from(p) <= hi {
        let z = 10f64.powi(p);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y(z) + 4.0,
            if p < 0 { format!("{z}") } else { format!("{z:.0}") },
            y = y(z)
        );
        p += 1;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="black"/><line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="black"/>"##,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h,
        TOP + plot_h
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(i),
            TOP + plot_h + 18.0,
            r.level
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">z (log scale)</text>"#,
        LEFT + plot_w / 2.0,
        H - 14.0,
        escape(level_name),
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // Threshold.
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{}" y1="{t:.1}" y2="{t:.1}" stroke="#c00" stroke-dasharray="6 4"/>"##,
        LEFT + plot_w,
        t = y(threshold_z)
    );
    let series: [(&str, &str, &str, Vec<Option<f64>>); 3] = [
        ("blind", "#1f77b4", "", rows.iter().map(|r| Some(r.blind_z)).collect()),
        ("informed", "#ff7f0e", "", rows.iter().map(|r| r.informed_z).collect()),
        (
            "wrong key (blind)",
            "#777",
            "4 3",
            rows.iter().map(|r| Some(r.wrong_key_blind_z)).collect(),
        ),
    ];
    for (_, color, dash, values) in &series {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|z| format!("{:.1},{:.1}", x(i), y(z))))
            .collect();
        if points.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{color}"/>"#);
        }
    }
    // Legend.
    let lx = W - RIGHT + 15.0;
    let mut ly = TOP + 10.0;
    for (name, color, dash, values) in &series {
        if values.iter().all(Option::is_none) {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{name}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
        ly += 20.0;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="#c00" stroke-dasharray="6 4"/><text x="{}" y="{}">p = 1e-9</text>"##,
        lx + 24.0,
        lx + 30.0,
        ly + 4.0
    );
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_is_well_formed_and_has_every_series() {
        let row = |level: f64, z: f64| Row {
            attack: "noise".into(),
            level,
            damage: level,
            blind_z: z,
            blind_p: 0.0,
            informed_z: Some(z * 100.0),
            informed_p: Some(0.0),
            wrong_key_blind_z: -0.5,
            wrong_key_informed_z: Some(0.3),
            perplexity: None,
            fingerprint: None,
            seconds: 1.0,
        };
        let rows = [row(0.1, 30.0), row(0.5, 12.0), row(1.0, 3.0)];
        let refs: Vec<&Row> = rows.iter().collect();
        let svg = plot("noise <test>", "relative RMS", &refs, 6.44);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("noise &lt;test&gt;") && svg.contains("p = 1e-9"));
    }
}
