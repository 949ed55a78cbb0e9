/* Live slider panels on the static site: no kernel, no network beyond this site.
 *
 * After each slider panel, the page has a marker <div class="live-panel"
 * data-manifest="..." data-image="k">: the panel's manifest (written at build time by
 * clipping_lib.lab.site_frames) and which picture of the cell above is the panel. This
 * script puts the panel's controls under that picture and, as the reader moves a control,
 * shows the frame the panel drew for that setting, with its readout. Until it runs, the
 * page shows the figure stored in the notebook.
 *
 * A frame exists for the default setting, for each control moved alone, and for the grid
 * of the manifest's two grid controls. Moving a control while another one (outside that
 * pair) is off its default returns the other one to its default, visibly.
 */
(function () {
  "use strict";

  let counter = 0;

  function keyOf(state) {
    return state.join(".");
  }

  function findPicture(marker) {
    let node = marker.previousElementSibling;
    while (node && !node.classList.contains("cell")) node = node.previousElementSibling;
    if (!node) return null;
    const pictures = node.querySelectorAll(".cell_output img");
    if (!pictures.length) return null;
    const index = Number(marker.dataset.image || 0);
    return pictures[Math.min(index, pictures.length - 1)];
  }

  function rangeControl(spec, id, onChange) {
    const row = document.createElement("div");
    row.className = "live-control live-range";
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = spec.label;
    const input = document.createElement("input");
    input.type = "range";
    input.id = id;
    input.min = "0";
    input.max = String(spec.labels.length - 1);
    input.step = "1";
    input.dataset.control = spec.name;
    const shown = document.createElement("output");
    shown.htmlFor = id;
    input.addEventListener("input", () => onChange(Number(input.value)));
    row.append(label, input, shown);
    return {
      element: row,
      set(index) {
        input.value = String(index);
        input.setAttribute("aria-valuetext", spec.labels[index]);
        shown.textContent = spec.labels[index];
      },
    };
  }

  function optionsControl(spec, id, onChange) {
    const group = document.createElement("fieldset");
    group.className = "live-control live-options";
    group.dataset.control = spec.name;
    const legend = document.createElement("legend");
    legend.textContent = spec.label;
    group.append(legend);
    const inputs = spec.labels.map((text, index) => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = id;
      input.value = String(index);
      input.addEventListener("change", () => input.checked && onChange(index));
      label.append(input, document.createTextNode(" " + text));
      group.append(label);
      return input;
    });
    return {
      element: group,
      set(index) {
        inputs.forEach((input, i) => (input.checked = i === index));
      },
    };
  }

  function checkboxControl(spec, id, onChange) {
    const row = document.createElement("div");
    row.className = "live-control live-checkbox";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.id = id;
    input.dataset.control = spec.name;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = spec.label;
    input.addEventListener("change", () => onChange(input.checked ? 1 : 0));
    row.append(input, label);
    return {
      element: row,
      set(index) {
        input.checked = index === 1;
      },
    };
  }

  function loadImage(url) {
    const image = new Image();
    image.src = url;
    return image.decode().then(() => image);
  }

  async function start(marker) {
    const picture = findPicture(marker);
    if (!picture) return;
    const base = new URL(marker.dataset.manifest, document.baseURI);
    const response = await fetch(base);
    if (!response.ok) return;
    const manifest = await response.json();
    const url = (name) => new URL(name, base).href;
    const defaults = manifest.controls.map((c) => c.default);
    const first = manifest.frames[keyOf(defaults)];
    if (!first) return;

    // The figure: the frozen background under the moving artists' overlay, or whole frames.
    const overlay = manifest.background ? document.createElement("img") : picture;
    const ready = [loadImage(url(first.image))];
    if (manifest.background) ready.push(loadImage(url(manifest.background)));
    await Promise.all(ready);
    const number = ++counter;
    const figure = document.createElement("div");
    figure.className = "live-figure";
    figure.id = `live-figure-${number}`;
    figure.dataset.stored = picture.src;
    picture.replaceWith(figure);
    figure.append(picture);
    if (manifest.background) {
      picture.src = url(manifest.background);
      overlay.className = "live-overlay";
      overlay.alt = "";
      overlay.setAttribute("aria-hidden", "true");
      figure.append(overlay);
    }

    const panel = document.createElement("div");
    panel.className = "live-panel-ui";
    panel.id = `live-panel-${number}`;
    panel.setAttribute("role", "group");
    panel.setAttribute("aria-label", "panel controls: the figure above follows them");
    const controls = document.createElement("div");
    controls.className = "live-controls";
    const readout = document.createElement("div");
    readout.className = "live-readout";
    readout.setAttribute("aria-live", "polite");
    panel.append(controls, readout);
    figure.after(panel);

    const state = defaults.slice();
    const grid = manifest.grid || [];
    const names = manifest.controls.map((c) => c.name);
    const widgets = [];

    function show() {
      const key = keyOf(state);
      const frame = manifest.frames[key];
      overlay.src = url(frame.image);
      readout.innerHTML = frame.readout;
      marker.dataset.state = key;
      panel.dataset.state = key;
      panel.dataset.frame = frame.image;
      widgets.forEach((widget, i) => widget.set(state[i]));
    }

    function move(position, index) {
      state[position] = index;
      if (!(keyOf(state) in manifest.frames)) {
        const inGrid = grid.includes(names[position]);
        state.forEach((_, other) => {
          const keep = other === position || (inGrid && grid.includes(names[other]));
          if (!keep) state[other] = defaults[other];
        });
      }
      if (!(keyOf(state) in manifest.frames)) {
        state.forEach((_, other) => other !== position && (state[other] = defaults[other]));
      }
      show();
    }

    manifest.controls.forEach((spec, position) => {
      const id = `live-panel-${number}-${spec.name}`;
      const make = { range: rangeControl, options: optionsControl, checkbox: checkboxControl };
      const widget = (make[spec.kind] || rangeControl)(spec, id, (i) => move(position, i));
      controls.append(widget.element);
      widgets.push(widget);
    });
    show();
    marker.dataset.ui = panel.id;
    marker.dataset.figure = figure.id;
    marker.dataset.live = "ready";

    // Fetch the other frames once the panel is near the screen, so moves are instant.
    const preload = () => {
      const files = new Set(Object.values(manifest.frames).map((f) => f.image));
      files.forEach((file) => {
        const image = new Image();
        image.src = url(file);
      });
    };
    if ("IntersectionObserver" in window) {
      const watcher = new IntersectionObserver((entries) => {
        if (entries.some((e) => e.isIntersecting)) {
          watcher.disconnect();
          preload();
        }
      }, { rootMargin: "600px" });
      watcher.observe(figure);
    } else {
      preload();
    }
  }

  function startAll() {
    document.querySelectorAll(".live-panel[data-manifest]").forEach((marker) => {
      start(marker).catch((error) => {
        marker.dataset.live = "failed";
        console.warn("live panel: kept the stored figure", error);
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startAll);
  } else {
    startAll();
  }
})();
