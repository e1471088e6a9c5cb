-- name: create-user^
SELECT user_id, first_name, last_name, contact_number, email, gender, date_of_birth,
       residential_address, id_number, city_of_birth, registration_date
FROM create_user($1, $2, $3, $4, $5, $6, $7, $8, $9);
