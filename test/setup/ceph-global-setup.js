module.exports = require('./ceph-global').setup;
