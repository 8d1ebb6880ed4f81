// Node sample with a dependency from the npm registry.
const isNumber = require("is-number");
module.exports = (req, res) => {
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ five: isNumber("5"), word: isNumber("five"), resolved: require.resolve("is-number") }));
};
