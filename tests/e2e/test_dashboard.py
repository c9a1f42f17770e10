"""The dashboard, in Debian's chromium: sign-in, the jobs list, a job's charts (their data, live), pause, resume
and cancel, compare, the queue page, team isolation, basic accessibility. Screenshots go to
test-artifacts/dashboard/."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import job_spec, screenshots, sign_in, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHART_DATA = """id => { const c = window.rlad.charts[id]; if (!c || !c.u) return null;
  return {raw: c.raw.map(s => ({label: s.label, key: s.key, steps: s.steps, values: s.values})),
          plotted: c.u.data.map(a => Array.from(a)), labels: c.u.series.map(s => s.label)}; }"""


def test_sign_in_sets_a_secure_http_only_cookie_and_a_wrong_key_is_refused(page, service) -> None:
    page.goto(service.base_url + "/ui/jobs")
    assert "/ui/login" in page.url  # not signed in: the sign-in page, remembering where to go
    page.get_by_label("API key").fill("rlad_not_a_key")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "That key is unknown, expired or revoked."
    sign_in(page, service, service.api_key)
    (cookie,) = page.context.cookies()
    assert (
        cookie["name"] == "rlad_session" and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    )
    assert cookie["value"] != service.api_key  # a server-side session's token, never the key
    assert "rlad_session" not in page.evaluate("document.cookie")  # scripts cannot read it
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/login")
    assert page.context.cookies() == []


def test_the_jobs_list_shows_each_job_with_its_status_filters_and_updates_live(
    page, service, http, models, finished_jobs
) -> None:
    sign_in(page, service, service.api_key)
    rlad, grpo = finished_jobs["rlad"], finished_jobs["grpo"]
    row = page.locator(f"tr[data-job-id='{rlad['id']}']")
    row.wait_for()
    assert row.get_attribute("data-status") == "succeeded"
    assert row.locator(".chip").inner_text() == "succeeded"
    cells = row.locator("td").all_inner_texts()
    assert "rlad-a05" in cells and "rlad" in cells and "local" in cells and "12/12" in cells[7]
    page.get_by_label("Method").select_option("grpo")
    page.wait_for_function(f"!document.querySelector(\"tr[data-job-id='{rlad['id']}']\")")
    assert page.locator(f"tr[data-job-id='{grpo['id']}']").count() == 1 and "method=grpo" in page.url
    page.get_by_label("Method").select_option("")
    page.locator(f"tr[data-job-id='{rlad['id']}']").wait_for()
    # a job submitted elsewhere appears, and moves on to succeeded, without a reload
    new = http.post("/v1/jobs", json=job_spec(models, name="fresh", steps=4, eval_every=0, checkpoint_every=0)).json()
    page.locator(f"tr[data-job-id='{new['id']}']").wait_for(timeout=10_000)
    page.locator(f"tr[data-job-id='{new['id']}'][data-status='succeeded']").wait_for(timeout=60_000)
    screenshots(page, "jobs")


def test_the_job_page_charts_carry_the_jobs_actual_points(page, service, http, finished_jobs) -> None:
    job = finished_jobs["rlad"]
    sign_in(page, service, service.api_key, f"/ui/jobs/{job['id']}")
    api = {s["key"]: s for s in http.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]}
    for chart, key in [
        ("reward", "reward_mean"),
        ("loss", "loss"),
        ("entropy", "entropy"),
        ("accuracy", "eval/accuracy"),
        ("clip", "clip_frac_high"),
        ("gap", "teacher_gap"),
        ("throughput", "tokens_per_s"),
    ]:
        page.wait_for_function(f"window.rlad.charts[{chart!r}] && window.rlad.charts[{chart!r}].u")
        data = page.evaluate(CHART_DATA, chart)
        (raw,) = [s for s in data["raw"] if s["key"] == key]
        assert raw["steps"] == api[key]["steps"] and raw["values"] == pytest.approx(api[key]["values"]), chart
        # what uPlot draws: x = the steps, and the raw line of the series = the values at those steps
        label = raw["label"] if key.startswith("eval/") else raw["label"] + " (raw)"  # eval: not smoothed
        drawn = dict(zip(data["plotted"][0], data["plotted"][data["labels"].index(label)], strict=True))
        assert [drawn[s] for s in api[key]["steps"]] == pytest.approx(api[key]["values"]), chart
    assert len(api["loss"]["steps"]) == 12
    by_difficulty = page.evaluate(CHART_DATA, "eval-difficulty")
    assert [s["key"] for s in by_difficulty["raw"]] == ["eval/accuracy/d1", "eval/accuracy/d2"]
    # the timeline, the checkpoints with download links, the samples, the config
    page.locator("#timeline li[data-kind='succeeded']").wait_for()
    page.locator("#checkpoints tr[data-step='12'] a").wait_for()
    link = page.locator("#checkpoints tr[data-step='12'] a")
    assert link.get_attribute("href") == f"/v1/jobs/{job['id']}/checkpoints/12/download"
    with page.expect_download() as dl:
        link.click()
    assert dl.value.suggested_filename == f"{job['id']}-step-12.tar"
    page.locator("#samples .sample").first.wait_for()
    assert page.locator("#samples .sample .prompt").first.inner_text().endswith("=")
    assert '"method": "rlad"' in page.locator("#config").inner_text()
    assert page.locator("#cancel").is_hidden()  # a finished job cannot be cancelled
    screenshots(page, "job")


def test_a_live_chart_gains_points_while_the_job_runs_pause_resume_and_cancel_from_the_page(
    page, service, http, models
) -> None:
    job = http.post(
        "/v1/jobs", json=job_spec(models, name="long-rlad", steps=3000, eval_every=0, checkpoint_every=0)
    ).json()
    wait_status(http, job["id"], {"running"})
    sign_in(page, service, service.api_key, f"/ui/jobs/{job['id']}")
    page.wait_for_function("window.rlad.charts.loss && window.rlad.charts.loss.pointCount() > 0")
    first = page.evaluate("window.rlad.charts.loss.pointCount()")
    # new points arrive over server-sent events, without a reload
    page.wait_for_function(f"window.rlad.charts.loss.pointCount() >= {first + 10}", timeout=30_000)
    assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
    steps = page.evaluate("window.rlad.charts.loss.raw[0].steps")
    assert steps == sorted(set(steps)) and steps[-1] - steps[0] + 1 == len(steps)  # no gap, no duplicate
    # pause (the trainer checkpoints, the worker is freed), then resume; the buttons follow the status
    assert page.locator("#resume").is_hidden()
    page.get_by_role("button", name="Pause").click()
    page.wait_for_function("document.querySelector('#job-status').textContent === 'paused'", timeout=30_000)
    assert page.locator("#pause").is_hidden() and http.get(f"/v1/jobs/{job['id']}").json()["worker"] is None
    screenshots(page, "job-paused")
    page.get_by_role("button", name="Resume").click()
    page.wait_for_function("document.querySelector('#job-status').textContent === 'running'", timeout=60_000)
    assert page.locator("#resume").is_hidden() and page.locator("#pause").is_visible()
    # cancel, from the keyboard, with confirmation
    page.locator("#cancel").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Cancel this job?")
    dialog.wait_for()
    dialog.get_by_role("button", name="Cancel job").click()
    page.wait_for_function("document.querySelector('#job-status').textContent === 'cancelled'", timeout=30_000)
    assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert page.locator("#cancel").is_hidden()


def test_compare_overlays_two_jobs_with_a_legend_and_their_final_evaluation(page, service, http, finished_jobs) -> None:
    rlad, grpo = finished_jobs["rlad"], finished_jobs["grpo"]
    sign_in(page, service, service.api_key)
    for job in (rlad, grpo):
        page.get_by_label(f"select {job['name']} to compare").check()
    page.get_by_role("button", name="Compare selected (2)").click()
    page.wait_for_url(re.compile(r"/ui/compare\?job="))
    page.wait_for_function("window.rlad.charts.reward && window.rlad.charts.reward.u")
    data = page.evaluate(CHART_DATA, "reward")
    assert {s["label"] for s in data["raw"]} == {"rlad-a05", "grpo-base"}
    for job in (rlad, grpo):
        api = http.get(f"/v1/jobs/{job['id']}/metrics", params={"key": "reward_mean"}).json()["series"][0]
        (raw,) = [s for s in data["raw"] if s["label"] == job["name"]]
        assert raw["steps"] == api["steps"] and raw["values"] == pytest.approx(api["values"])
    legend = page.locator("#chart-reward .u-legend .u-series:not([hidden])").all_inner_texts()
    assert any("rlad-a05" in t for t in legend) and any("grpo-base" in t for t in legend)
    rows = page.locator("#final-eval tbody tr")
    assert rows.count() == 2
    header = page.locator("#final-eval thead th").all_inner_texts()
    assert "accuracy" in header and "accuracy/d2" in header
    latest = http.get(f"/v1/jobs/{rlad['id']}/metrics/latest", params={"key": "eval/accuracy"}).json()["latest"]
    cell = page.locator(f"#final-eval tr[data-job-id='{rlad['id']}'] td").nth(header.index("accuracy") - 1)
    assert float(cell.inner_text()) == pytest.approx(latest["eval/accuracy"]["value"], abs=1e-3)
    screenshots(page, "compare")


def test_another_teams_key_does_not_show_the_job(page, service, http, finished_jobs, other_team_key) -> None:
    job = finished_jobs["rlad"]
    sign_in(page, service, other_team_key)
    page.wait_for_function("document.querySelector('#jobs-updated').textContent.startsWith('updated')")
    assert page.locator(f"tr[data-job-id='{job['id']}']").count() == 0
    assert page.locator("#jobs-empty").is_visible()
    r = page.goto(service.base_url + f"/ui/jobs/{job['id']}")
    assert r.status == 404 and page.get_by_role("heading", name="No such job").is_visible()
    assert page.request.get(service.base_url + f"/v1/jobs/{job['id']}").status == 404
    r = page.goto(service.base_url + f"/ui/compare?job={job['id']}")
    assert "Not found for your team" in page.get_by_role("alert").inner_text()


def test_the_queue_page_shows_the_workers_and_queue_depth(page, service) -> None:
    sign_in(page, service, service.api_key, "/ui/queue")
    gpu = page.locator("#workers tr[data-worker^='gpu@']")
    gpu.wait_for()
    cells = gpu.locator("td").all_inner_texts()
    assert cells[1] == "gpu" and cells[2] in ("idle", "busy") and cells[3].endswith("ago")
    assert page.locator("#workers tr[data-worker^='cpu@']").count() == 1
    assert page.locator("#queues tr[data-queue='gpu'] td").nth(1).inner_text().isdigit()
    screenshots(page, "queue")


CONTRAST = """() => {
  const lum = (c) => { const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map(Number).map(v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const bg = (e) => { for (; e; e = e.parentElement) { const c = getComputedStyle(e).backgroundColor;
    if (c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c; } return 'rgb(255, 255, 255)'; };
  const out = []; let checked = 0;
  const texts = 'h1, h2, h3, th, td, a, button, label, .chip, .hint, .muted, .sample pre';
  for (const e of document.querySelectorAll(texts)) {
    if (!e.offsetParent || !e.textContent.trim()) continue;
    const a = lum(getComputedStyle(e).color), b = lum(bg(e));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); checked++;
    const what = `${e.tagName}.${e.className} "${e.textContent.trim().slice(0, 30)}"`;
    if (ratio < 4.5) out.push(`${what}: ${ratio.toFixed(2)}`);
  }
  return {checked, failing: out}; }"""

UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
  .map(e => e.outerHTML.slice(0, 80))"""


def test_pages_have_labelled_controls_and_readable_contrast(page, service, finished_jobs) -> None:
    job, other = finished_jobs["rlad"], finished_jobs["grpo"]
    page.goto(service.base_url + "/ui/login")
    assert page.evaluate(UNLABELLED) == [] and page.evaluate(CONTRAST)["failing"] == []
    sign_in(page, service, service.api_key)
    for path, ready in [
        ("/ui/jobs", "tr[data-job-id]"),
        (f"/ui/jobs/{job['id']}", "#chart-loss"),
        (f"/ui/compare?job={job['id']}&job={other['id']}", "#chart-loss"),
        ("/ui/queue", "#workers tr[data-worker]"),
    ]:
        page.goto(service.base_url + path)
        page.locator(ready).first.wait_for()
        assert page.evaluate(UNLABELLED) == [], path
        contrast = page.evaluate(CONTRAST)
        assert contrast["failing"] == [] and contrast["checked"] >= 10, (path, contrast)


def test_a_long_live_tail_stays_bounded_in_the_browser(page, service) -> None:
    sign_in(page, service, service.api_key, "/ui/queue")  # any page: charts.js is loaded on all
    tail = page.evaluate("""() => {
      const c = new RladCharts.Chart(document.querySelector('main'), {id: 'probe', title: 'probe', yLabel: 'v'});
      c.raw = [{label: 'v', key: 'v', steps: [], values: [], smooth: true, color: '#0b5cad'}];
      for (let step = 1; step <= 20000; step++) c.append('v', step, step / 2);
      c.redraw();
      const s = c.raw[0];
      return {n: s.steps.length, first: s.steps[0], last: s.steps[s.steps.length - 1],
              sorted: s.steps.every((x, i) => i === 0 || x > s.steps[i - 1]),
              values: s.steps.every((x, i) => s.values[i] === x / 2), drawn: c.u.data[0].length}; }""")
    assert 2000 <= tail["n"] <= 4000 and tail["first"] == 1 and tail["last"] == 20000
    assert tail["sorted"] and tail["values"] and tail["drawn"] == tail["n"]
