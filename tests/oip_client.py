"""Open Inference Protocol calls as Triton's published Python client makes them (JSON mode).

Usage: oip_client.py HOST:PORT TOKEN; prints one JSON object of what the server answered.
"""
import json
import sys

import numpy as np
import tritonclient.http as httpclient

url, token = sys.argv[1], sys.argv[2]
client = httpclient.InferenceServerClient(url=url)
headers = {"Authorization": f"Bearer {token}"}


def plain(value):
    """A numpy element as JSON: BYTES elements arrive as str (JSON mode) or bytes."""
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else value.item()


def infer(model, rows, datatype="FP32", output="output0"):
    array = np.array(rows, dtype=np.float32 if datatype == "FP32" else np.int64)
    tensor = httpclient.InferInput("input0", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=False)
    wanted = httpclient.InferRequestedOutput(output, binary_data=False)
    result = client.infer(model, inputs=[tensor], outputs=[wanted], headers=headers)
    values = result.as_numpy(output)
    return {
        "shape": list(values.shape),
        "data": [plain(v) for v in values.flatten()],
        "model_version": result.get_response()["model_version"],
    }


answers = {
    "live": client.is_server_live(),
    "one_row": infer("iris", [[5.1, 3.5, 1.4, 0.2]]),
    "three_rows": infer(
        "iris", [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]
    ),
    "batched": infer("adder", [[1, 2], [3, 4], [5, 6], [7, 8]], datatype="INT64"),
}
print(json.dumps(answers))
