//! The `Spotting:` output parser on crafted outputs: both spellings PaddleX reads, the scale
//! to image pixels, and malformed outputs.

use ocrvl::postprocess::{parse_spotting, SpottingError};

fn locs(values: [u32; 8]) -> String {
    values.iter().map(|v| format!("<|LOC_{v}|>")).collect()
}

#[test]
fn bare_lines_scale_to_image_pixels() {
    let out = format!(
        "Hello world{}\nSecond line{}</s>",
        locs([0, 0, 500, 0, 500, 100, 0, 100]),
        locs([100, 200, 1000, 200, 1000, 1000, 100, 1000])
    );
    let lines = parse_spotting(&out, 2000, 300).unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].text, "Hello world");
    assert_eq!(
        lines[0].polygon,
        [[0.0, 0.0], [1000.0, 0.0], [1000.0, 30.0], [0.0, 30.0]]
    );
    assert_eq!(lines[1].text, "Second line");
    assert_eq!(
        lines[1].polygon,
        [[200.0, 60.0], [2000.0, 60.0], [2000.0, 300.0], [200.0, 300.0]]
    );
}

#[test]
fn the_delimited_form_reads_the_same() {
    let body = locs([10, 20, 30, 20, 30, 40, 10, 40]);
    let delimited = format!("<|TEXT_START|>票据 No. 7<|TEXT_END|><|LOC_BEGIN|>{body}<|LOC_END|>");
    let bare = format!("票据 No. 7{body}");
    let a = parse_spotting(&delimited, 1000, 1000).unwrap();
    let b = parse_spotting(&bare, 1000, 1000).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].text, "票据 No. 7");
    assert_eq!(a[0].polygon[2], [30.0, 40.0]);
}

#[test]
fn fractional_pixels_are_kept() {
    let lines = parse_spotting(&format!("x{}", locs([1, 1, 999, 1, 999, 3, 1, 3])), 333, 7).unwrap();
    assert!((lines[0].polygon[1][0] - 999.0 * 333.0 / 1000.0).abs() < 1e-9);
    assert!((lines[0].polygon[2][1] - 3.0 * 7.0 / 1000.0).abs() < 1e-9);
}

#[test]
fn empty_output_is_no_lines() {
    assert_eq!(parse_spotting("", 10, 10).unwrap(), vec![]);
    assert_eq!(parse_spotting("  </s>", 10, 10).unwrap(), vec![]);
}

#[test]
fn fewer_than_eight_locations_is_an_error_naming_the_line() {
    let out = format!(
        "good{}\nshort<|LOC_1|><|LOC_2|><|LOC_3|>\nnext{}",
        locs([0; 8]),
        locs([0; 8])
    );
    let err = parse_spotting(&out, 100, 100).unwrap_err();
    assert_eq!(
        err,
        SpottingError::WrongLocationCount {
            index: 1,
            text: "short".into(),
            found: 3
        }
    );
    assert!(err.to_string().contains("short"), "{err}");
    // Too many in one run is wrong too.
    let err = parse_spotting(&format!("a{}{}", locs([0; 8]), locs([0; 8])), 9, 9).unwrap_err();
    assert!(
        matches!(err, SpottingError::WrongLocationCount { found: 16, .. }),
        "{err:?}"
    );
}

#[test]
fn out_of_range_locations_are_an_error() {
    let err = parse_spotting(&format!("edge{}", locs([0, 0, 1001, 0, 1001, 5, 0, 5])), 10, 10).unwrap_err();
    assert_eq!(
        err,
        SpottingError::OutOfRange {
            index: 0,
            text: "edge".into(),
            value: 1001
        }
    );
    let huge = "x<|LOC_99999999999999999999999|>".to_string() + &"<|LOC_0|>".repeat(7);
    assert!(matches!(
        parse_spotting(&huge, 10, 10),
        Err(SpottingError::OutOfRange { .. })
    ));
}

#[test]
fn text_without_locations_at_the_end_is_an_error() {
    let out = format!("line{}\ntruncated tail", locs([0; 8]));
    let err = parse_spotting(&out, 10, 10).unwrap_err();
    assert_eq!(
        err,
        SpottingError::TrailingText {
            text: "truncated tail".into()
        }
    );
}

#[test]
fn malformed_location_tokens_are_text() {
    // `<|LOC_x|>` is not a location token: it stays in the line's text.
    let out = format!("a <|LOC_x|> b{}", locs([0; 8]));
    assert_eq!(parse_spotting(&out, 10, 10).unwrap()[0].text, "a <|LOC_x|> b");
    assert!(matches!(
        parse_spotting("x", 0, 10),
        Err(SpottingError::BadImageSize { .. })
    ));
}
