/* Tracking page: live updates over the socket, the map, and the snapshot fallback.
   No inline script: everything it needs comes from data- attributes (strict CSP). */
(function () {
  "use strict";
  var root = document.getElementById("tracking");
  if (!root) { return; }
  var FINISHED = ["delivered", "cancelled", "returned"];
  var POLL_MS = 30000, BACKOFF_BASE_MS = 500, BACKOFF_CAP_MS = 30000, STALE_MS = 2 * 60000;
  var map = null, driverMarker = null, fitted = false, lastPositionAt = 0, lastPosition = null;
  var socket = null, attempts = 0, pollTimer = null, refreshTimer = null;

  function liveEl() { return document.querySelector("[data-live-state]"); }
  function isFinished(status) { return FINISHED.indexOf(status) !== -1; }

  // --- snapshot: the server-rendered live-state partial, re-read after gaps ------------------
  function refresh() {
    var region = document.getElementById("live");
    if (window.htmx && region) { window.htmx.trigger(region, "porchlight:refresh"); }
  }
  function refreshSoon() { clearTimeout(refreshTimer); refreshTimer = setTimeout(refresh, 200); }
  function startPolling() { if (!pollTimer) { pollTimer = setInterval(refresh, POLL_MS); } }
  function stopPolling() { clearInterval(pollTimer); pollTimer = null; }

  document.body.addEventListener("htmx:afterSwap", function () { fromAttributes(); });

  // --- messages (contract section 3) ----------------------------------------------------------
  var handlers = {
    status: function (m) {
      var el = liveEl();
      if (!el) { return; }
      var changed = el.getAttribute("data-status") !== m.status;
      el.setAttribute("data-status", m.status);
      if (el.textContent !== m.label) { el.textContent = m.label; }
      if (isFinished(m.status)) { endMap(); }
      if (changed) { refreshSoon(); }
    },
    eta: function (m) {
      var el = liveEl();
      if (!el) { return; }
      var value = m.eta || "";
      if (el.getAttribute("data-eta") !== value) { el.setAttribute("data-eta", value); refreshSoon(); }
    },
    location: function (m) {
      var el = liveEl(), at = Date.parse(m.recorded_at);
      if (!el || isNaN(at) || at < lastPositionAt || isFinished(el.getAttribute("data-status"))) { return; }
      lastPositionAt = at;
      lastPosition = m;
      writePosition(el, m);
      showDriver(m.lat, m.lon, m.heading);
      showAge();
    }
  };

  // --- socket with exponential backoff and full jitter -----------------------------------------
  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    try { socket = new WebSocket(scheme + location.host + root.getAttribute("data-ws-path")); }
    catch (e) { retry(); return; }
    var opened = false;
    socket.onopen = function () {
      opened = true; attempts = 0; stopPolling();
      root.setAttribute("data-socket", "open");
    };
    socket.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message && handlers.hasOwnProperty(message.type)) { handlers[message.type](message); }
    };
    socket.onclose = function () {
      socket = null;
      root.setAttribute("data-socket", "closed");
      if (opened) { refresh(); }  // we may have missed messages: re-read the snapshot
      retry();
    };
  }
  function retry() {
    startPolling();
    var cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, attempts));
    attempts += 1;
    setTimeout(connect, Math.random() * cap);
  }

  // --- map ---------------------------------------------------------------------------------------
  function initMap() {
    var box = document.getElementById("map");
    if (!box || !window.L) { return; }
    var dest = [parseFloat(box.getAttribute("data-dest-lat")), parseFloat(box.getAttribute("data-dest-lon"))];
    map = window.L.map(box, { scrollWheelZoom: false }).setView(dest, 14);
    var tiles = box.getAttribute("data-tiles");
    if (tiles) {
      window.L.tileLayer(tiles, {
        maxZoom: 19,
        attribution: tiles.indexOf("openstreetmap") !== -1 ? "&copy; OpenStreetMap contributors" : ""
      }).addTo(map);
    }
    window.L.circleMarker(dest, { radius: 9, color: "#ffffff", weight: 3, fillColor: "#0b5cad", fillOpacity: 1 })
      .addTo(map).bindTooltip(box.getAttribute("data-t-destination"));
  }
  function showDriver(lat, lon, heading) {
    if (!map) { return; }
    var point = [lat, lon];
    if (!driverMarker) {
      var icon = window.L.divIcon({ className: "driver-icon", html: '<span class="driver-arrow"></span>', iconSize: [28, 28] });
      driverMarker = window.L.marker(point, { icon: icon, keyboard: false, title: document.getElementById("map").getAttribute("data-t-driver") }).addTo(map);
    } else {
      driverMarker.setLatLng(point);
    }
    var arrow = driverMarker.getElement() && driverMarker.getElement().querySelector(".driver-arrow");
    if (arrow) {
      arrow.style.transform = "rotate(" + ((heading == null || heading === "" ? 0 : Number(heading)) + 135) + "deg)";  // the tip is drawn at 225 degrees
      arrow.classList.toggle("no-heading", heading == null || heading === "");
    }
    if (!fitted) {
      fitted = true;
      var box = document.getElementById("map");
      map.fitBounds([point, [parseFloat(box.getAttribute("data-dest-lat")), parseFloat(box.getAttribute("data-dest-lon"))]], { padding: [32, 32], maxZoom: 16 });
    }
  }
  function writePosition(el, m) {
    el.setAttribute("data-driver-lat", Number(m.lat).toFixed(4));
    el.setAttribute("data-driver-lon", Number(m.lon).toFixed(4));
    el.setAttribute("data-driver-heading", m.heading == null ? "" : String(m.heading));
    el.setAttribute("data-position-at", m.recorded_at);
  }
  function hideDriver() { if (driverMarker && map) { map.removeLayer(driverMarker); } driverMarker = null; fitted = false; }
  function endMap() {
    hideDriver();
    var card = document.querySelector(".map-card");
    if (card) { card.hidden = true; }
  }

  // "position N minutes old" when pings stop
  function showAge() {
    var age = document.querySelector("[data-position-age]"), el = liveEl();
    if (!age || !el || !el.getAttribute("data-position-at")) { return; }
    var minutes = Math.floor((Date.now() - Date.parse(el.getAttribute("data-position-at"))) / 60000);
    age.textContent = minutes * 60000 >= STALE_MS
      ? root.getAttribute("data-t-minutes-old").replace("{n}", String(minutes))
      : root.getAttribute("data-t-just-now");
    age.classList.toggle("stale", minutes * 60000 >= STALE_MS);
  }

  // After first load and every snapshot: take the position from the server's attributes, but
  // never let an older snapshot move the marker back.
  function fromAttributes() {
    var el = liveEl();
    if (!el) { return; }
    var status = el.getAttribute("data-status");
    if (isFinished(status)) { endMap(); return; }
    var lat = el.getAttribute("data-driver-lat"), lon = el.getAttribute("data-driver-lon");
    if (!lat || !lon) { hideDriver(); return; }
    var at = Date.parse(el.getAttribute("data-position-at"));
    if (!isNaN(at) && at < lastPositionAt) {
      if (lastPosition) { writePosition(el, lastPosition); }
      return;
    }
    lastPositionAt = isNaN(at) ? lastPositionAt : at;
    showDriver(parseFloat(lat), parseFloat(lon), el.getAttribute("data-driver-heading"));
    showAge();
  }

  initMap();
  fromAttributes();
  setInterval(showAge, 30000);
  if ("WebSocket" in window) { connect(); } else { startPolling(); }
})();
