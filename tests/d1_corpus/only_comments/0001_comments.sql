-- nothing to do; really
/* still; nothing
   to do */
-- the end
