module.exports = require('./ceph-global').teardown;
