"""The Flask quickstart's minimal application (flask.palletsprojects.com), plus a JSON route."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/")
def hello_world():
    return "<p>Hello, World from Flask!</p>"


@app.route("/items/<int:item_id>", methods=["GET", "POST"])
def item(item_id):
    return jsonify(id=item_id, method=request.method, q=request.args.get("q"), body=request.get_data(as_text=True))
