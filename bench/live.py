"""The live webcam tab in Chromium with a fake camera: answers per second and frame-to-answer latency.

    python -m bench.live --seconds 20
    python -m bench.live --seconds 20 --compare OTHER_CHECKOUT/app.py   # and another checkout's app, in turn

Starts `python app.py`, opens the live tab in headless Chromium whose fake camera plays two full-size photos (a
cat and a dog, alternating every half second), starts the stream and records it for --seconds, once with the
answers alone and once with "Show where it looked" ticked (a heatmap of every frame). A script in the
page notes when each frame leaves the browser (its HTTP request) and when each answer arrives (the queue's
event stream). The browser sends a frame every `stream_every` seconds; the app keeps only the newest one it has not
answered (Gradio replaces a waiting frame with the next), so when answering takes longer than that, frames are
dropped, not queued. The latency of an answer is the time from the frame it answers leaving the browser: the
newest frame sent by the time the answer before it arrived, or, when that one was answered already, the next.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from bench.app_load import PHOTOS, ROOT, start_app
from bench.common import report

sys.path.insert(0, str(ROOT / "tests"))
from test_browser import CHROMIUM, chromium_args, start_live_stream, write_y4m  # noqa: E402

# Notes the time of every frame sent (a POST to /gradio_api/stream/, or the queue/join that opens the stream)
# and of every answer (a "process_streaming" message on the queue's event stream).
RECORDER = """(() => {
  const fetch = window.fetch, decoder = new TextDecoder();
  window.liveFrames = []; window.liveAnswers = [];
  window.fetch = async (input, init) => {
    const url = typeof input === 'string' ? input : input.url;
    if (url.includes('/gradio_api/stream/') || url.includes('/gradio_api/queue/join'))
      window.liveFrames.push(performance.now());
    const response = await fetch(input, init);
    if (!url.includes('/gradio_api/queue/data') || !response.body) return response;
    const [mine, theirs] = response.body.tee();
    (async () => {
      const reader = mine.getReader();
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        const now = performance.now();
        for (const _ of decoder.decode(value).matchAll(/"msg": ?"process_streaming"/g)) window.liveAnswers.push(now);
      }
    })();
    return new Response(theirs, {status: response.status, statusText: response.statusText,
                                 headers: response.headers});
  };
})();"""


def record(browser, url: str, seconds: float, explain: bool) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.add_init_script(RECORDER)
    page.goto(url)
    if explain:
        page.get_by_role("tab", name="Live webcam").click()
        page.locator("#live-explain input").check()
    start_live_stream(page, timeout_ms=60_000)
    page.wait_for_function("() => window.liveAnswers.length > 0", timeout=60_000)
    page.wait_for_timeout(seconds * 1000)
    frames, answers = page.evaluate("[window.liveFrames, window.liveAnswers]")
    page.close()
    latencies = [answer - frames[frame] for answer, frame in zip(answers, answered_frames(frames, answers))]
    counted = slice(1, None)  # the first answer starts the clock: warm-up is not counted
    seconds = (answers[-1] - answers[0]) / 1000
    return {"answers_per_s": len(answers[counted]) / seconds, "p50_ms": statistics.median(latencies[counted]),
            "p95_ms": statistics.quantiles(latencies[counted], n=20)[-1], "answers": len(answers[counted]),
            "frames_dropped": len([f for f in frames if f < answers[-1]]) - len(answers)}


def answered_frames(frames: list[float], answers: list[float]) -> list[int]:
    """Which frame each answer is for, as the app picks them: the first answer is the first frame's; each later one
    is for the newest frame sent by the time the answer before it arrived (when the app was free again), or, when
    no frame came since the last one answered, for the next frame sent."""
    picked = [0]
    for free_at in answers[:-1]:
        waiting = [i for i in range(picked[-1] + 1, len(frames)) if frames[i] <= free_at]
        picked.append(waiting[-1] if waiting else min(picked[-1] + 1, len(frames) - 1))
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--compare", type=Path, help="another checkout's app.py, measured after this one")
    args = parser.parse_args()
    app_files = [ROOT / "app.py", *([args.compare.resolve()] if args.compare else [])]
    with tempfile.TemporaryDirectory() as folder:
        camera = write_y4m(Path(folder) / "pets.y4m", [PHOTOS / "cat.85.jpg", PHOTOS / "dog.79.jpg"])
        rows = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args(camera))
            for app_file in app_files:
                app, url = start_app(app_file, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    for explain in (False, True):
                        figures = record(browser, url, args.seconds, explain)
                        rows.append([str(app_file), "yes" if explain else "no", *figures.values()])
                finally:
                    app.terminate()
            browser.close()
    report(f"The live tab in Chromium, a fake 640x480 camera, {args.seconds:.0f} s of stream",
           ["app", "heatmap", "answers/s", "p50 latency ms", "p95 latency ms", "answers", "frames dropped"], rows)


if __name__ == "__main__":
    main()
