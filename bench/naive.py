"""The naive baseline: what a data scientist writes in 30 lines to score MQTT telemetry.

    .venv/bin/python bench/naive.py --port 1883

A paho callback that runs the ONNX session on each reading (a batch of 1) and publishes its
score to ``scores/<machine>``, as the gateway does (JSON ``{"machine", "ts", "score"}``). Written
the way such a script is written, on purpose: paho's ``loop_forever``, the stdlib ``json``, an
``InferenceSession`` with ONNX Runtime's default options, paho's default socket options (Nagle on),
scores at QoS 0, telemetry subscribed at QoS 1 and acknowledged by paho as it arrives. No spool,
no alerts, no uplink. ``bench/compare.py`` runs it as its own process against the same load
generator and broker as the gateway.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()

    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    features = [f["name"] for f in manifest["features"]]
    session = ort.InferenceSession(str(MODEL_DIR / manifest["model"]["file"]))
    input_name, score_name = manifest["io"]["input"], manifest["io"]["score"]

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        machine = msg.topic.split("/", 1)[1]
        data = json.loads(msg.payload)
        for reading in data if isinstance(data, list) else [data]:
            x = np.array([[reading[f] for f in features]], dtype=np.float32)
            score = float(session.run([score_name], {input_name: x})[0].reshape(-1)[0])
            result = {"machine": machine, "ts": reading["ts"], "score": score}
            client.publish(f"scores/{machine}", json.dumps(result))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe("telemetry/#", qos=1)
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.loop_forever()


if __name__ == "__main__":
    main()
